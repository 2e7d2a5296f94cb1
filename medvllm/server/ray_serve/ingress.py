"""The ingress deployment: the single server's FastAPI app (create_app: auth, parsing, limits, audit,
metrics, answers and streams), with RemoteEngine in place of the local engine.

The ingress tokenizes and the engine replicas get token ids through a DeploymentHandle. That hop is
where Ray Serve routes by request content: the HTTP proxy forwards a request to the ingress before its
body is read, so a router there could not see the prompt; the handle call carries it (routing.py).
Each answer names its replica in the `x-medvllm-replica` header.
"""

from __future__ import annotations

import logging

from ray import serve

from medvllm.config import Config
from medvllm.loader import open_model
from medvllm.server.app import ServerSettings, create_app
from medvllm.server.ray_serve.remote_engine import RemoteEngine, answered_by

log = logging.getLogger("medvllm.server")

REPLICA_HEADER = b"x-medvllm-replica"


@serve.ingress()
class Ingress:
    def __init__(self, settings: ServerSettings, config: Config, engines, most_replicas: int):
        self.settings, self.config, self.engines, self.most = settings, config, engines, most_replicas

    def __serve_build_asgi_app__(self):
        app = create_app(self.settings, load=self._load)
        app.add_middleware(ReplicaHeader)
        return app

    def _load(self) -> RemoteEngine:
        """On the app's loader thread: the tokenizer here, and the replicas' figures once one is ready
        (/health answers 503 until then)."""
        source = open_model(self.config.model)
        info = self.engines.info.remote().result()
        log.info("engine replica %s answered: max_model_len=%d", info["replica"], info["max_model_len"])
        return RemoteEngine(self.engines, source, info, self.most)


class ReplicaHeader:
    """ASGI middleware: adds `x-medvllm-replica: ID` to an answer that a replica produced."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        holder: dict = {}
        token = answered_by.set(holder)

        async def send_with_replica(message):
            if message["type"] == "http.response.start" and "replica" in holder:
                headers = [*message.get("headers", []), (REPLICA_HEADER, holder["replica"].encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            answered_by.reset(token)
