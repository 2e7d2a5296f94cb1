"""`medvllm serve --ray`: the same server on Ray Serve, N engine replicas behind one endpoint
(medvllm/server/ray_serve/, docs/RAY_SERVE.md). `serve` checks every setting first, then hands over here."""

from __future__ import annotations

import signal
import threading

from medvllm.cli import output
from medvllm.errors import ConfigError


def add_ray_flags(parser) -> None:
    g = parser.add_argument_group("Ray Serve (with --ray)")
    g.add_argument("--ray", action="store_true", help="serve through Ray Serve: engine replicas behind one endpoint")
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster ('auto' finds the one this node joined with `ray start`); default: start one here",
    )
    g.add_argument("--replicas", type=int, metavar="N", help="a fixed number of engine replicas (default 1)")
    g.add_argument("--min-replicas", type=int, metavar="N", help="autoscale: fewest engine replicas (default 1)")
    g.add_argument("--max-replicas", type=int, metavar="N", help="autoscale: most engine replicas")
    g.add_argument(
        "--target-ongoing-requests",
        type=float,
        metavar="N",
        help="autoscale: requests in flight per replica that Ray Serve aims at (default: Ray's, 2)",
    )
    g.add_argument(
        "--replica-cpus", type=float, default=1.0, metavar="N", help="CPUs Ray reserves per replica (default 1)"
    )
    g.add_argument(
        "--replica-gpus",
        type=float,
        metavar="N",
        help="GPUs Ray reserves per replica (default: --tensor-parallel-size on CUDA, else 0)",
    )


RAY_ONLY = ("ray_address", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_gpus")


def check_ray_flags(args) -> None:
    """Ray flags without --ray would be silently ignored: refuse them."""
    if not args.ray:
        given = [name for name in RAY_ONLY if getattr(args, name) is not None]
        if given or args.replica_cpus != 1.0:
            flag = "--" + (given[0] if given else "replica_cpus").replace("_", "-")
            raise ConfigError(f"{flag} only applies to Ray Serve: add --ray, or drop {flag}")


def run_ray(args, config, settings) -> int:
    """Starts (or joins) Ray, deploys the ingress and the engine replicas, serves until SIGTERM / Ctrl-C."""
    try:
        import ray

        from medvllm.server.ray_serve import launch
        from medvllm.server.ray_serve.options import RayOptions
    except ImportError as e:
        raise ConfigError(f"--ray needs {e.name!r}, which is not installed: pip install 'ray[serve]'") from None
    options = RayOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        address=args.ray_address,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    app = launch.build_app(config, settings, options)  # checks the options before Ray starts
    built = getattr(args, "ray_app", None)
    if built is not None:  # app_builder: Serve's own launcher (serve run, KubeRay) starts it
        built.append(app)
        return 0
    ray.init(address=options.address, include_dashboard=False if options.address is None else None)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        launch.run(app, args.host, args.port)
        output.info(
            args,
            f"serving on http://{args.host}:{args.port} through Ray Serve ({options.most_replicas} replica(s) "
            "at most); /health turns 200 once a replica is ready",
        )
        done.wait()
    finally:
        from ray import serve

        # our own cluster goes with us; on a shared one, only our application is removed
        if options.address is None:
            serve.shutdown()
        else:
            serve.delete(launch.APP_NAME)
        ray.shutdown()
    return 0


def app_builder(args: dict):
    """The application for Serve's own launchers: `serve run medvllm.cli.serve_ray:app_builder model=PATH
    replicas=2 api-keys-file=PATH`, or a KubeRay RayService's `import_path` with these `args`. The keys are
    `medvllm serve` flags without their dashes ({"max-num-seqs": 64, "open-metrics": true}); every check
    `serve` makes runs first. Serve's HTTP options bind the port, so the bind rule assumes all addresses
    (a key is needed) unless `host` says otherwise."""
    from medvllm.cli.main import build_parser

    argv = ["serve", "--ray"]
    for key, value in {"host": "0.0.0.0", **args}.items():
        flag = "--" + key.replace("_", "-")
        value = {"true": True, "false": False}.get(value.lower(), value) if isinstance(value, str) else value
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    ns = build_parser().parse_args(argv)
    ns.verbose, ns.quiet, ns.ray_app = getattr(ns, "verbose", False), getattr(ns, "quiet", False), []
    ns.run(ns)
    return ns.ray_app[0]
