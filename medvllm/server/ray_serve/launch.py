"""Builds the Ray Serve application (one ingress in front of the engine replicas) and runs it."""

from __future__ import annotations

from ray import serve

from medvllm.config import Config
from medvllm.server.app import ServerSettings
from medvllm.server.ray_serve.ingress import Ingress
from medvllm.server.ray_serve.options import HEALTH_CHECK_PERIOD_S, RayOptions
from medvllm.server.ray_serve.replica import EngineReplica
from medvllm.server.ray_serve.routing import ROUTER

APP_NAME = "medvllm"


def build_app(config: Config, settings: ServerSettings, options: RayOptions):
    """The application graph: Ingress (HTTP, one replica) -> EngineReplica (N, routed by prompt prefix)."""
    options.check()
    engine_options = options.engine_deployment(config, settings.max_queue)
    engines = serve.deployment(EngineReplica, name="MedvllmEngine").options(
        **engine_options,
        request_router_config=serve.config.RequestRouterConfig(
            request_router_class=ROUTER,
            request_router_kwargs={
                # prefix first while the replicas' queues differ by less than a full batch; beyond that, load
                "imbalanced_threshold": config.max_num_seqs,
                # forget a replica's least recently sent prompts past 400k tokens (about what a large KV
                # cache holds), as its prefix cache forgets them; without this the tree only grows
                "do_eviction": True,
            },
        ),
    )
    ingress = serve.deployment(Ingress, name="MedvllmIngress").options(
        num_replicas=1,
        # one ingress holds the per-key limits and writes the one audit file; it only parses and tokenizes
        ray_actor_options={"num_cpus": 0},
        # ingress -> engine calls wait for a replica with room, up to the engines' admission limit
        max_ongoing_requests=options.most_replicas * engine_options["max_ongoing_requests"],
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        graceful_shutdown_timeout_s=options.shutdown_timeout_s,
    )
    return ingress.bind(
        settings,
        config,
        engines.bind(config, settings.deployment_profile, settings.settings_sha256),
        options.most_replicas,
    )


def run(app, host: str, port: int) -> None:
    """Starts Serve's HTTP proxy on host:port and deploys `app` (returns once its replicas are up)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
