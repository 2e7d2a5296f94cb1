"""The ASGI app: an OpenAI-compatible API over one AsyncLLMEngine.

The app answers as soon as it is bound; the model loads and warms up on a background thread meanwhile,
and until it is ready `/health` and the API answer 503, so a load balancer knows when to send traffic.
On shutdown the engine thread aborts whatever is left and stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from medvllm.engine.async_engine import AsyncLLMEngine
from medvllm.engine.llm_engine import LLMEngine
from medvllm.sampling_params import SamplingParams
from medvllm.server import chat, completions
from medvllm.server.audit import AuditLog, files_digest, refused_record
from medvllm.server.errors import APIError
from medvllm.server.keys import KeyTable
from medvllm.server.metrics import CONTENT_TYPE, ServerMetrics
from medvllm.server.openapi import build_schema
from medvllm.server.parsing import check_ready
from medvllm.server.protocol import ChatCompletionRequest, CompletionRequest
from medvllm.server.rate_limits import RateLimits
from medvllm.server.request_log import log_request

log = logging.getLogger("medvllm.server")


@dataclass
class ServerSettings:
    api_key: str | None = None  # one key, named "default"
    api_keys_file: str | None = None  # named keys with limits (server/keys.py), beside or instead of api_key
    audit_log: str | None = None  # a JSON-lines file, one record per request (server/audit.py)
    audit_content: bool = False  # put prompt and output text in the audit records (off: digests only)
    audit_max_bytes: int | None = None  # rotate the audit log at this size (the chain goes on)
    open_metrics: bool = False  # /metrics without a key: counts and timings only, for scrapers and routers
    deployment_profile: str | None = None  # recorded in audit records
    settings_sha256: str | None = None  # of the resolved engine settings, recorded in audit records
    max_queue: int = 256  # requests that may wait beyond the running batch before new ones get 503
    max_body_bytes: int = 4 * 1024 * 1024  # a larger request body gets 413, unread
    max_request_tokens: int | None = None  # prompt + n x max_tokens over a request's prompts; None: 16 x max_model_len
    log_content: bool = False  # put prompt and completion text in the log (off: they may hold PHI)
    served_model_name: str | None = None  # default: the model file or folder name
    loading_retry_after_s: int = 5
    # the priority of requests that give none and whose key sets none (scheduling_policy='priority')
    default_priority: int = 0


class ServerState:
    """What the routes share. Only the event loop changes it, except load(), which runs once on its thread."""

    def __init__(
        self,
        settings: ServerSettings,
        load: Callable[[], LLMEngine],
        on_failure: Callable[[BaseException], None] | None = None,
    ):
        self.settings = settings
        self.keys = KeyTable(settings.api_key, settings.api_keys_file)
        self.limits = RateLimits()
        self.audit = (
            AuditLog(settings.audit_log, settings.audit_content, settings.audit_max_bytes)
            if settings.audit_log
            else None
        )
        self.model_sha256: str | None = None
        self.metrics = ServerMetrics(lambda: self.engine.stats() if self.engine is not None else None)
        self.status = "loading"  # loading | ready | failed | stopping
        self.engine: AsyncLLMEngine | None = None
        self.error: BaseException | None = None
        self.inflight = 0  # engine requests admitted and not yet done
        self._load, self._on_failure = load, on_failure
        self.stopping = threading.Event()  # set by shutdown; a load still running then ends unstarted

    def load(self) -> None:
        try:
            started = time.perf_counter()
            engine = self._load()
            if self.stopping.is_set():  # stopped while loading: release what the load made, start nothing
                release(engine)
                return
            # an engine already behind an async front (replicas elsewhere: server/ray_serve) is warm and running
            remote = getattr(engine, "remote", False)
            if not remote:
                warm_up(engine)
            if self.audit is not None:  # records name the exact model files: read them once, before serving
                self.model_sha256 = files_digest(engine.source.path)
            self.tokenizer = engine.tokenizer
            self.grammars = getattr(engine, "grammars", None)  # structured outputs' compiler and cache
            self.vocab_size = engine.source.hf_config.vocab_size
            self.model_name = self.settings.served_model_name or served_name(engine.source.path)
            self.max_model_len = engine.max_model_len
            self.created = int(time.time())
            self.engine = engine if remote else AsyncLLMEngine(engine).start()
            self.status = "ready"
            log.info(
                "ready: model=%s max_model_len=%d %s load_and_warmup_s=%.1f",
                self.model_name,
                engine.max_model_len,
                engine.describe() if remote else f"kv_blocks={engine.runner.num_blocks}",
                time.perf_counter() - started,
            )
        except BaseException as e:  # noqa: BLE001 - reported, and the server stops
            self.error, self.status = e, "failed"
            log.error("loading the model failed: %s", e)
            if self._on_failure is not None:
                self._on_failure(e)


def warm_up(engine: LLMEngine) -> None:
    """One short greedy generation, so the first client does not pay for first-call costs."""
    ids = list(engine.tokenizer.encode("Hello")) or [0]
    engine.add_request(ids, SamplingParams(temperature=0.0, max_tokens=2), request_id="warm-up")
    while engine.has_unfinished_requests():
        engine.step()


def release(engine: LLMEngine) -> None:
    """Stops what the engine holds beyond memory (tensor-parallel workers). `load` may hand back any
    object shaped like an LLMEngine: one without shutdown has nothing to stop."""
    shutdown = getattr(engine, "shutdown", None)
    if shutdown is not None:
        shutdown()


def served_name(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def create_app(
    settings: ServerSettings, load: Callable[[], LLMEngine], on_failure: Callable[[BaseException], None] | None = None
) -> FastAPI:
    """`load` builds the LLMEngine (called once, on a background thread, after the app starts), or returns
    an engine already running elsewhere behind AsyncLLMEngine's methods, marked `remote` (server/ray_serve)."""
    state = ServerState(settings, load, on_failure)

    @asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=state.load, name="medvllm-loader", daemon=True)
        loader.start()
        yield
        state.status = "stopping"
        state.stopping.set()
        if loader.is_alive():
            # leaving now would end the process under the loader's native code, which aborts it ("terminate
            # called without an active exception", exit 134): the load finishes first, then nothing starts
            log.info("stopping: waiting for the model load to finish")
            await asyncio.to_thread(loader.join)
            state.status = "stopping"  # not the "ready" a load that just finished may have set
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)
            # the engine thread has ended; now release what the engine holds (tensor-parallel workers)
            await asyncio.to_thread(release, state.engine.engine)
        if state.audit is not None:
            state.audit.close()
        log.info("stopped")

    app = FastAPI(title="Med-vLLM", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = state

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405: OpenAI's error shape too
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()

    @app.get("/health")
    async def health():
        ok = state.status == "ready" and state.engine.alive
        status = "ok" if ok else ("engine_failed" if state.status == "ready" else state.status)
        return JSONResponse({"status": status}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request):
        try:
            if not settings.open_metrics:
                state.keys.identify(request.headers.get("authorization"))
        except APIError as e:
            return e.response()
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        return await guarded(request, "/v1/models", "models", lambda r, s, rid: _models(r, s))

    @app.post("/v1/completions")
    async def create_completion(request: Request):
        return await guarded(request, completions.ENDPOINT, "cmpl", completions.create)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        return await guarded(request, chat.ENDPOINT, "chatcmpl", chat.create)

    async def guarded(request: Request, endpoint: str, prefix: str, handler) -> Response:
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        try:
            return await handler(request, state, request_id)
        except APIError as e:
            state.metrics.count(endpoint, e.status)
            log_request(request_id, endpoint, e.status, error=e.code or e.type)
            if state.audit is not None and not getattr(request.state, "audited", False):
                state.audit.write(refused_record(state, request, request_id, endpoint, e.status, e.code or e.type))
            return e.response()
        except Exception:  # a bug of ours: logged with its traceback, answered in OpenAI's shape
            log.exception("request_id=%s failed", request_id)
            state.metrics.count(endpoint, 500)
            return APIError(
                500, f"internal error (request {request_id}): see the server log", type="server_error"
            ).response()

    app.openapi = lambda: build_schema(
        app, {completions.ENDPOINT: CompletionRequest, chat.ENDPOINT: ChatCompletionRequest}
    )
    return app


async def _models(request: Request, state: ServerState) -> Response:
    check_ready(state, request.headers.get("authorization"))
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": state.model_name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "medvllm",
                    "max_model_len": state.max_model_len,
                }
            ],
        }
    )
