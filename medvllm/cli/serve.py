"""`medvllm serve`: an OpenAI-compatible HTTP API over one engine, under a deployment profile.

Settings resolve exactly as for `inference generate` (same profile and override flags). Everything that
can be checked is checked before the port is bound: the bind/auth rule, the Config, the model files.
The model then loads and warms up while /health answers 503. SIGTERM stops accepting connections, lets
in-flight requests finish (up to --shutdown-timeout, then aborts them) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from medvllm.cli import output
from medvllm.cli.generate_cmd import describe_choice
from medvllm.cli.serve_ray import add_ray_flags, check_ray_flags, run_ray
from medvllm.cli.settings_flags import add_setting_flags, overrides_from
from medvllm.errors import ConfigError, MedVLLMError, ModelLoadError

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(commands, common) -> None:
    p = commands.add_parser(
        "serve",
        parents=[common],
        help="serve an OpenAI-compatible HTTP API",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /health and "
        "/metrics over HTTP, for unchanged OpenAI clients.",
    )
    p.add_argument("--model", help="a .gguf file or Hugging Face model folder (default: the embedded model)")
    p.add_argument(
        "--deployment-profile",
        metavar="NAME|PATH|none",
        help="profile to apply under the explicit flags (default: $MEDVLLM_DEPLOYMENT_PROFILE, "
        "else auto-selected; 'none' turns profiles off)",
    )
    p.add_argument("--seed", type=int, help="the engine's random seed")
    net = p.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    net.add_argument(
        "--api-key", metavar="KEY", help="clients must send 'Authorization: Bearer KEY' (default: $MEDVLLM_API_KEY)"
    )
    net.add_argument(
        "--api-keys-file",
        metavar="PATH",
        help="named API keys with limits, stored as SHA-256 digests (JSON; `medvllm keys new` makes entries); "
        "re-read on SIGHUP and when it changes (default: $MEDVLLM_API_KEYS_FILE)",
    )
    net.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without an API key (a proxy in front authenticates)",
    )
    net.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="requests that may wait beyond the running batch (max_num_seqs); past that a request "
        "gets 503 with Retry-After (default 256)",
    )
    net.add_argument(
        "--default-priority",
        type=int,
        default=0,
        metavar="N",
        help="priority of requests that give none in their body (with --scheduling-policy priority: lower "
        "runs sooner; default 0)",
    )
    net.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        metavar="N",
        help="largest request body in bytes; a larger one gets 413 unread (default 4 MiB)",
    )
    net.add_argument(
        "--max-request-tokens",
        type=int,
        metavar="N",
        help="most tokens one request may ask for: prompt tokens + n x max_tokens over its prompts "
        "(default 16 x max_model_len)",
    )
    net.add_argument(
        "--served-model-name", metavar="NAME", help="the model id clients send (default: the model file or folder name)"
    )
    net.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds to let in-flight requests finish before aborting them (default 30)",
    )
    net.add_argument(
        "--log-content",
        action="store_true",
        help="log prompt and completion text (off by default: they may hold patient data)",
    )
    net.add_argument(
        "--open-metrics",
        action="store_true",
        help="serve /metrics without an API key (it holds counts and timings, no text), for a Prometheus "
        "scraper or a router such as the Inference Extension's endpoint picker, which send none",
    )
    net.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append one JSON record per request to PATH: key name, client, model and settings digests, "
        "tokens, timings, SHA-256 of prompt and output (no text); re-opened on SIGHUP for log rotation",
    )
    net.add_argument(
        "--audit-max-bytes",
        type=int,
        metavar="N",
        help="rotate the audit log at N bytes: the full file becomes PATH.1, PATH.2, ... and the hash chain "
        "goes on in a new PATH (default: no rotation by size)",
    )
    net.add_argument(
        "--audit-content",
        action="store_true",
        help="also put prompt and output text in the audit records (off by default: they may hold patient data)",
    )
    net.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_ray_flags(p)
    add_setting_flags(p)
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from medvllm.server.audit import settings_digest
    from medvllm.server.auth import API_KEY_ENV, check_bind, normalize_key
    from medvllm.server.keys import KEYS_FILE_ENV, KeyTable

    try:
        import uvicorn

        from medvllm.server import ServerSettings, create_app
    except ImportError as e:
        raise ConfigError(
            f"the server needs {e.name!r}, which is not installed: pip install 'medvllm[serve]'"
        ) from None
    from medvllm.deployment import resolve
    from medvllm.deployment.model_info import model_info_for
    from medvllm.engine.llm_engine import LLMEngine
    from medvllm.hardware import detect
    from medvllm.loader import open_model

    check_ray_flags(args)
    api_key = normalize_key(args.api_key or os.environ.get(API_KEY_ENV))
    keys_file = args.api_keys_file or os.environ.get(KEYS_FILE_ENV) or None
    keys = KeyTable(api_key, keys_file)  # a bad keys file fails now, before anything loads
    check_bind(args.host, api_key or keys_file, args.allow_unauthenticated)
    if args.audit_max_bytes is not None and args.audit_max_bytes < 4096:
        raise ConfigError(f"--audit-max-bytes {args.audit_max_bytes} is below 4096: give room for a few records")
    if args.audit_content and not args.audit_log:
        raise ConfigError("--audit-content does nothing without --audit-log PATH: add it, or drop --audit-content")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue {args.max_queue} is negative: give 0 or more waiting requests")
    if args.max_body_bytes < 1:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes} is not positive: give the largest body in bytes")
    if args.max_request_tokens is not None and args.max_request_tokens < 1:
        raise ConfigError(
            f"--max-request-tokens {args.max_request_tokens} is not positive: give a token count, or leave it out"
        )
    resolution = resolve(
        overrides_from(args), args.deployment_profile, os.environ, detect(), model_info_for(args.model)
    )
    for message in resolution.warnings:
        output.warn(message)
    output.info(args, describe_choice(resolution))
    config = resolution.config
    source = open_model(config.model)  # a bad path fails now, before the port is bound
    configure_logging(args)

    failures: list[BaseException] = []

    def on_failure(error: BaseException) -> None:  # called on the loader thread
        failures.append(error)
        server.should_exit = True

    settings = ServerSettings(
        api_key=api_key,
        max_queue=args.max_queue,
        default_priority=args.default_priority,
        max_body_bytes=args.max_body_bytes,
        max_request_tokens=args.max_request_tokens,
        log_content=args.log_content,
        served_model_name=args.served_model_name,
        api_keys_file=keys_file,
        audit_log=args.audit_log,
        open_metrics=args.open_metrics,
        audit_content=args.audit_content,
        audit_max_bytes=args.audit_max_bytes,
        deployment_profile=resolution.profile_name,
        settings_sha256=settings_digest(config.to_dict()),
    )
    if args.ray:
        return run_ray(args, config, settings)
    app = create_app(settings, load=lambda: LLMEngine(config, source), on_failure=on_failure)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
    )
    output.info(
        args,
        f"serving on http://{args.host}:{args.port} (auth {'on: ' + ', '.join(keys.names()) if keys.enabled else 'OFF'}); "
        "the model loads now and /health turns 200 when it is ready",
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; this handler makes that a clean exit 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGHUP, lambda *_: reload(app.state.served))
    server.run()
    if failures:
        error = failures[0]
        if isinstance(error, MedVLLMError):
            raise error
        raise ModelLoadError(f"loading the model failed: {type(error).__name__}: {error}")
    return 0


def reload(state) -> None:
    """SIGHUP: new keys (the old ones stay if the file does not parse), and a fresh audit file handle."""
    state.keys.reload()
    if state.audit is not None:
        state.audit.reopen()


def configure_logging(args) -> None:
    """Request lines (no text unless --log-content) and lifecycle messages, on stderr."""
    logger = logging.getLogger("medvllm")
    if not any(getattr(h, "_medvllm", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._medvllm = True
        logger.addHandler(handler)
    logger.setLevel("WARNING" if args.quiet else args.log_level.upper())
