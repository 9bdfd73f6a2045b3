"""The HTTP server: an OpenAI-compatible FastAPI app over an `Engine`, and running it with uvicorn.

`create_app(engine, metrics, api_key=None)` serves `/v1/completions` and
`/v1/chat/completions` (plain JSON or SSE streaming with `stream_options.include_usage`),
`/v1/models` (one entry per task model), `/health` and `/metrics` (Prometheus). Every
error is OpenAI's error JSON: bad JSON or parameters 400, missing/wrong API key 401 (only
`/v1/*` is protected, when a key is set), unknown model or route 404, queue full 429 with
`Retry-After`, shutting down 503. A client that disconnects (streaming or not) has its
request aborted, which frees its KV blocks.

`run_server(config)` loads the engine, binds (127.0.0.1 unless told otherwise), prints
the URL through `on_ready`, and serves until SIGTERM/SIGINT; then it stops accepting,
lets in-flight requests finish (up to `drain_timeout` seconds), closes the engine and
returns normally, so the process exits 0. `BackgroundServer` runs an app on a free
loopback port in a thread (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # module level: FastAPI resolves handler annotations from these globals

from suntool.errors import SuntoolError
from suntool.serve.protocol import APIError, bad_request

if TYPE_CHECKING:
    from suntool.serve.engine import Engine, EngineConfig
    from suntool.serve.metrics import ServerMetrics

log = logging.getLogger("suntool.serve")
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeConfig:
    """`suntool serve` as a value: what to serve, where, and how the engine is laid out."""

    artifacts: tuple[str, ...]
    engine: EngineConfig
    names: tuple[str, ...] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    drain_timeout: float = 60.0
    log_level: str = "warning"


def _error_response(err: APIError):
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def install_openai_errors(app) -> None:
    """Answer `APIError` and Starlette's HTTP errors (404, 405...) with OpenAI's error body."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def api_error(_request, err: APIError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(err.status_code, str(err.detail), type=kind))


def install_api_key(app, api_key: str | None) -> None:
    """With a key, `/v1/*` needs 'Authorization: Bearer KEY' (401 with OpenAI's body otherwise)."""

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                message = "missing API key: send 'Authorization: Bearer KEY'" if not token else "incorrect API key"
                return _error_response(APIError(401, message, type="authentication_error", code="invalid_api_key"))
        return await call_next(request)


def create_app(engine: Engine, metrics: ServerMetrics | None = None, *, api_key: str | None = None):
    """The FastAPI app serving `engine`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask

    from suntool.serve import protocol
    from suntool.serve.engine import EngineClosed, QueueFull, RequestTooLong, UnknownModel

    app = FastAPI(title="suntool", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    install_openai_errors(app)
    install_api_key(app, api_key)

    @app.get("/health")
    async def health():
        stats = engine.stats()
        status = 503 if engine.closed else 200
        return JSONResponse({"status": "closing" if engine.closed else "ok", "models": sorted(engine.models),
                             "running": stats.running, "waiting": stats.waiting,
                             "kv_blocks_used": stats.kv_blocks_used, "kv_blocks_total": stats.kv_blocks_total},
                            status_code=status)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        body = metrics.render() if metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": name, "object": "model", "created": created, "owned_by": "suntool",
                 "root": str(model.ref.path), "max_model_len": model.max_model_len,
                 "prefill_group": model.prefill.key, "decode_group": model.decode.key}
                for name, model in engine.models.items()]
        return {"object": "list", "data": data}

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad_request(f"the request body is not valid JSON: {err}") from err

    def prepare(req: protocol.GenerationRequest):
        try:
            model = engine.model(req.model)
        except UnknownModel as err:
            raise APIError(404, str(err), type="not_found_error", param="model", code="model_not_found") from err
        if req.chat:
            if not model.has_chat_template:
                raise bad_request(f"{req.model} has no chat template; use /v1/completions", "messages")
            ids = model.encode(model.render_chat(list(req.messages)), add_special_tokens=False)
        elif req.prompt is not None:
            ids = model.encode(req.prompt, add_special_tokens=True)
        else:
            ids = list(req.prompt_ids)
            vocab = model.decode.model.config.get_text_config(decoder=True).vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"prompt token ids must lie in [0, {vocab})", "prompt")
        default = (model.max_model_len - len(ids)) if req.chat else 16
        max_tokens = req.max_tokens if req.max_tokens is not None else max(1, default)
        try:
            engine.check_fits(model, len(ids), max_tokens)
            params = req.sampling(max_tokens)
        except RequestTooLong as err:
            raise bad_request(str(err), "messages" if req.chat else "prompt", "context_length_exceeded") from err
        except SuntoolError as err:
            raise bad_request(str(err)) from err
        return ids, params

    def submit(req, ids, params, sink):
        try:
            return engine.submit(req.model, ids, params, sink)
        except QueueFull as err:
            raise APIError(429, str(err), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from err
        except EngineClosed as err:
            raise APIError(503, str(err), type="server_error", code="shutting_down") from err
        except RequestTooLong as err:
            raise bad_request(str(err), "prompt", "context_length_exceeded") from err

    async def generate(request: Request, chat: bool):
        req = protocol.parse_request(await read_json(request), chat=chat)
        ids, params = prepare(req)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event):
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        seq = submit(req, ids, params, sink)
        request_id = protocol.new_id(chat)
        if req.stream:
            stream = _sse(events, seq, engine, req, request_id)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(engine.abort, seq))
        return await _complete(request, events, seq, engine, req, request_id)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    return app


def _finish_error(reason: str) -> APIError | None:
    if reason == "abort":
        return APIError(503, "the server stopped before the request finished", type="server_error",
                        code="shutting_down")
    if reason == "error":
        return APIError(500, "the engine failed while generating; see the server log", type="server_error")
    return None


async def _complete(request, events: asyncio.Queue, seq, engine: Engine, req, request_id: str):
    """Collect a whole answer; abort the request if the client goes away first."""
    from suntool.serve import protocol

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    pieces = []
    try:
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                engine.abort(seq)
                return _error_response(APIError(499, "client closed the request"))
            event = getter.result()
            pieces.append(event.text)
            if event.finish_reason is not None:
                break
    finally:
        watcher.cancel()
        engine.abort(seq)
    error = _finish_error(event.finish_reason)
    if error is not None:
        return _error_response(error)
    body = protocol.completion_body(request_id, req.model, req.chat, "".join(pieces), event.finish_reason,
                                    event.prompt_tokens, event.completion_tokens)
    return body


async def _sse(events: asyncio.Queue, seq, engine: Engine, req, request_id: str):
    """Server-sent events of one request; `finally` aborts it when the client disconnects mid-stream."""
    from suntool.serve import protocol

    def frame(body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    chat, model = req.chat, req.model
    try:
        if chat:
            yield frame(protocol.chunk_body(request_id, model, chat, text="", role=True,
                                            include_usage=req.include_usage))
        while True:
            event = await events.get()
            error = _finish_error(event.finish_reason) if event.finish_reason else None
            if error is not None:
                yield frame(error.body())
                break
            if event.text:
                yield frame(protocol.chunk_body(request_id, model, chat, text=event.text,
                                                include_usage=req.include_usage))
            if event.finish_reason is not None:
                yield frame(protocol.chunk_body(request_id, model, chat, text=None if chat else "",
                                                finish_reason=event.finish_reason, include_usage=req.include_usage))
                if req.include_usage:
                    yield frame(protocol.usage_chunk(request_id, model, chat, event.prompt_tokens,
                                                     event.completion_tokens))
                break
        yield "data: [DONE]\n\n"
    finally:
        engine.abort(seq)


# -- running it ---------------------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise SuntoolError(f"cannot resolve --host {host!r}: {err}") from err
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise SuntoolError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _uvicorn_server(app, config_kwargs: dict):
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises the signal after a graceful shutdown (exit status 143); exit 0 instead."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return DrainingServer(uvicorn.Config(app, **config_kwargs))


def _uvicorn_kwargs(log_level: str, drain_timeout: float | None) -> dict:
    return dict(log_level=log_level, access_log=False, lifespan="off", http="h11", ws="none",
                timeout_graceful_shutdown=drain_timeout, timeout_keep_alive=5)


def run_server(config: ServeConfig, *, progress: Callable[[str], None] | None = None,
               on_ready: Callable[[str, Engine], None] | None = None) -> None:
    """Load, bind, serve until SIGTERM/SIGINT, drain, close. Returns normally after a signal."""
    from suntool.serve.engine import Engine, keep_this_thread_serial
    from suntool.serve.metrics import ServerMetrics

    sock = bind_socket(config.host, config.port)  # fail on a busy port before minutes of loading
    metrics = ServerMetrics()
    keep_this_thread_serial()  # before loading: the engine's compute thread then owns the only OpenMP team
    try:
        engine = Engine.from_artifacts(list(config.artifacts), names=list(config.names) if config.names else None,
                                       config=config.engine, observer=metrics, progress=progress)
    except BaseException:
        sock.close()
        raise
    metrics.attach(engine)
    try:
        app = create_app(engine, metrics, api_key=config.api_key)
        server = _uvicorn_server(app, _uvicorn_kwargs(config.log_level, config.drain_timeout))
        if on_ready is not None:
            on_ready(url_of(sock), engine)
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()


class BackgroundServer:
    """Serve an engine on a free loopback port from a thread: `with BackgroundServer(engine) as server: server.url`."""

    def __init__(self, engine: Engine, *, api_key: str | None = None, host: str = "127.0.0.1",
                 drain_timeout: float | None = 30.0):
        from suntool.serve.metrics import ServerMetrics

        self.engine = engine
        if isinstance(engine.observer, ServerMetrics):
            self.metrics = engine.observer
        else:
            self.metrics = ServerMetrics()
            self.metrics.attach(engine)
        self.app = create_app(engine, self.metrics, api_key=api_key)
        self.sock = bind_socket(host, 0)
        self.url = url_of(self.sock)
        self.server = _uvicorn_server(self.app, _uvicorn_kwargs("warning", drain_timeout))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="uvicorn")

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
