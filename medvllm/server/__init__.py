"""OpenAI-compatible HTTP server: `create_app(ServerSettings(...), load=...)`, run by `medvllm serve`."""

from medvllm.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
