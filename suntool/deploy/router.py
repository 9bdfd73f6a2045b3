"""The deployment's OpenAI-compatible front: each request to its model's prefill instance, then to a decode instance.

`create_router_app(plan, config, api_key=None)` serves `/v1/completions` and
`/v1/chat/completions` (plain or streaming), `/v1/models` (the task models), `/health`
(probes every instance) and `/metrics` (`RouterMetrics`), with suntool's request validation
(`suntool.serve.protocol.parse_request`), OpenAI error bodies and API-key check
(`suntool.serve.app.install_openai_errors` / `install_api_key`). For one request:

1. **Prefill.** The body goes to the least-loaded instance of the model's prefill pool with
   `model` rewritten to that instance's name (or the task's LoRA adapter), `max_tokens=1`,
   no streaming, and `kv_transfer_params.suntool_kv_key` = the model's K/V key; the instance
   computes the prompt and the connector stores its K/V under that key. (With the `nixl`
   connector the prefill asks for a remote decode and its response's `kv_transfer_params`
   are handed on instead, as vLLM's toy proxy does.)
2. **Decode.** The original body goes to the least-loaded instance of the model's decode
   pool — model-agnostic in SUN: every instance holds the shared decode half — with `model`
   rewritten to the decode half's name, the same key, and `cache_salt` = the key (so vLLM's
   own prefix cache on a shared decode instance never hands one task's K/V to another).
   The answer (or each SSE chunk) goes back with `model` set to the task model's name.

Failures are the client's to see and nobody else's: an instance that refuses the connection
is marked down (retried after `retry_after_s`) and the next instance of the pool is tried;
with none left the client gets 503. An instance that breaks mid-request gives 502, one that
does not answer within `request_timeout` 504; a stream that breaks after it started ends with
an SSE `error` event (502/504) and no `[DONE]`. Upstream 4xx answers (a prompt too long, say)
are passed through unchanged. Other requests are unaffected.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # module level: FastAPI resolves handler annotations from these globals

from suntool.serve.protocol import APIError, bad_request

if TYPE_CHECKING:
    from suntool.deploy.plan import DeployPlan, RoutedModel


@dataclass(frozen=True)
class RouterConfig:
    connect_timeout: float = 5.0
    request_timeout: float = 600.0  # longest wait for an instance's answer or next stream chunk
    retry_after_s: float = 5.0  # a failed instance gets new requests again after this


class Upstream:
    """One vLLM instance as the router sees it: URL, requests open there, and whether it is usable."""

    def __init__(self, name: str, url: str):
        self.name, self.url = name, url
        self.in_flight = 0
        self.down_until = 0.0

    def usable(self, now: float) -> bool:
        return now >= self.down_until


class Router:
    """Pool state and the two-step request flow; the FastAPI handlers are thin wrappers over `handle`."""

    def __init__(self, plan: DeployPlan, config: RouterConfig | None = None):
        from suntool.deploy.metrics import RouterMetrics

        self.plan, self.config = plan, config or RouterConfig()
        self.upstreams = {inst.name: Upstream(inst.name, inst.url) for inst in plan.instances}
        self.metrics = RouterMetrics(list(self.upstreams))
        self._tiebreak = itertools.count()
        self._client = None

    def client(self):
        import httpx

        if self._client is None:
            timeout = httpx.Timeout(self.config.request_timeout, connect=self.config.connect_timeout)
            self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
        return self._client

    # -- pools ------------------------------------------------------------------------------------------------
    def candidates(self, pool: tuple[str, ...]) -> list[Upstream]:
        """Usable instances of a pool, least loaded first (ties rotate so equal loads spread)."""
        now = time.monotonic()
        turn = next(self._tiebreak)
        members = [self.upstreams[name] for name in pool]
        usable = [u for u in members if u.usable(now)]
        order = {u.name: (i - turn) % len(members) for i, u in enumerate(members)}
        return sorted(usable, key=lambda u: (u.in_flight, order[u.name]))

    def _acquire(self, up: Upstream) -> None:
        up.in_flight += 1
        self.metrics.in_flight.labels(up.name).set(up.in_flight)

    def release(self, up: Upstream) -> None:
        up.in_flight -= 1
        self.metrics.in_flight.labels(up.name).set(up.in_flight)

    def mark_down(self, up: Upstream, kind: str) -> None:
        up.down_until = time.monotonic() + self.config.retry_after_s
        self.metrics.up.labels(up.name).set(0)
        self.metrics.upstream_errors.labels(up.name, kind).inc()

    def mark_up(self, up: Upstream) -> None:
        if up.down_until:
            up.down_until = 0.0
            self.metrics.up.labels(up.name).set(1)

    async def open(self, pool: tuple[str, ...], path: str, body: dict, *, what: str):
        """Send `body` to the best instance of `pool`; returns (upstream, streaming httpx response).

        The caller owns both: it must `release(upstream)` and close the response.
        """
        import httpx

        tried = []
        for up in self.candidates(pool):
            self._acquire(up)
            try:
                request = self.client().build_request("POST", up.url + path, json=body)
                response = await self.client().send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                self.release(up)
                self.mark_down(up, "connect")
                tried.append(up.name)
                continue
            except httpx.TimeoutException as err:
                self.release(up)
                self.metrics.upstream_errors.labels(up.name, "timeout").inc()
                raise APIError(504, f"the {what} instance {up.name} did not answer within "
                               f"{self.config.request_timeout:g} s", type="server_error", code="upstream_timeout"
                               ) from err
            except httpx.HTTPError as err:
                self.release(up)
                self.mark_down(up, "broken")
                raise APIError(502, f"the {what} instance {up.name} failed: {err!r}", type="server_error",
                               code="upstream_failed") from err
            self.mark_up(up)
            return up, response
        down = ", ".join(tried) or ", ".join(pool)
        raise APIError(503, f"no {what} instance is reachable (tried {down}); check the instances' logs or "
                       "restart them", type="server_error", code="instance_unavailable",
                       headers={"Retry-After": f"{self.config.retry_after_s:g}"})

    async def read_all(self, up: Upstream, response, what: str) -> tuple[int, Any]:
        """The whole (JSON) body of an opened response; 502/504 when the instance breaks or stalls."""
        import httpx

        try:
            raw = await response.aread()
        except httpx.TimeoutException as err:
            self.metrics.upstream_errors.labels(up.name, "timeout").inc()
            raise APIError(504, f"the {what} instance {up.name} did not finish within "
                           f"{self.config.request_timeout:g} s", type="server_error", code="upstream_timeout"
                           ) from err
        except httpx.HTTPError as err:
            self.mark_down(up, "broken")
            raise APIError(502, f"the {what} instance {up.name} failed mid-answer: {err!r}", type="server_error",
                           code="upstream_failed") from err
        finally:
            await response.aclose()
            self.release(up)
        try:
            return response.status_code, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.metrics.upstream_errors.labels(up.name, "status").inc()
            raise APIError(502, f"the {what} instance {up.name} answered {response.status_code} without JSON: "
                           f"{raw[:200]!r}", type="server_error", code="upstream_failed") from None

    # -- one request ------------------------------------------------------------------------------------------
    def prefill_body(self, model: RoutedModel, body: dict) -> dict:
        out = {k: v for k, v in body.items()
               if k not in ("stream", "stream_options", "max_completion_tokens", "min_tokens")}
        out.update(model=model.prefill_model, max_tokens=1)
        if self.plan.connector == "nixl":
            out["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False,
                                         "remote_engine_id": None, "remote_block_ids": None,
                                         "remote_host": None, "remote_port": None}
        else:
            out["kv_transfer_params"] = {"suntool_kv_key": model.kv_key}
        return out

    def decode_body(self, model: RoutedModel, body: dict, prefill_answer: dict) -> dict:
        out = dict(body, model=model.decode_model)
        if self.plan.connector == "nixl":
            out["kv_transfer_params"] = prefill_answer.get("kv_transfer_params")
        else:
            out["kv_transfer_params"] = {"suntool_kv_key": model.kv_key}
            out["cache_salt"] = model.kv_key
        return out

    async def handle(self, path: str, body: dict, model: RoutedModel, stream: bool):
        from fastapi.responses import JSONResponse, StreamingResponse

        arrival = time.perf_counter()
        up, response = await self.open(model.prefill_pool, path, self.prefill_body(model, body), what="prefill")
        status, answer = await self.read_all(up, response, "prefill")
        self.metrics.prefill.labels(model.name).observe(time.perf_counter() - arrival)
        if status != 200:
            return JSONResponse(answer, status_code=status)
        up, response = await self.open(model.decode_pool, path, self.decode_body(model, body, answer), what="decode")
        if not stream or response.status_code != 200:
            status, answer = await self.read_all(up, response, "decode")
            if isinstance(answer, dict) and "model" in answer:
                answer["model"] = model.name
            if status == 200:
                self.metrics.ttft.labels(model.name).observe(time.perf_counter() - arrival)
                self.metrics.e2e.labels(model.name).observe(time.perf_counter() - arrival)
            return JSONResponse(answer, status_code=status)
        return StreamingResponse(self.relay(up, response, model, arrival), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def relay(self, up: Upstream, response, model: RoutedModel, arrival: float):
        """Re-emit the decode instance's SSE stream under the task model's name; an error event if it breaks."""
        import httpx

        def error_frame(status: int, message: str, code: str) -> str:
            body = APIError(status, message, type="server_error", code=code).body()
            body["error"]["status"] = status
            return f"data: {json.dumps(body)}\n\n"

        first, finished = True, False
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    yield "data: [DONE]\n\n"
                    break
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "model" in chunk:
                    chunk["model"] = model.name
                if first:
                    first = False
                    self.metrics.ttft.labels(model.name).observe(time.perf_counter() - arrival)
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            if not finished:
                self.mark_down(up, "broken")
                yield error_frame(502, f"the decode instance {up.name} ended the stream early", "upstream_failed")
        except httpx.TimeoutException:
            self.metrics.upstream_errors.labels(up.name, "timeout").inc()
            yield error_frame(504, f"the decode instance {up.name} stalled for {self.config.request_timeout:g} s",
                              "upstream_timeout")
        except (httpx.HTTPError, json.JSONDecodeError) as err:
            self.mark_down(up, "broken")
            yield error_frame(502, f"the decode instance {up.name} failed mid-stream: {err!r}", "upstream_failed")
        finally:
            await response.aclose()
            self.release(up)
            status = "200" if finished else "502"
            self.metrics.requests.labels(model.name, status).inc()
            if finished:
                self.metrics.e2e.labels(model.name).observe(time.perf_counter() - arrival)

    async def probe(self) -> dict[str, bool]:
        """GET /health of every instance at once (2 s each)."""
        import httpx

        async def one(up: Upstream) -> bool:
            try:
                response = await self.client().get(up.url + "/health", timeout=2.0)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        names = list(self.upstreams)
        results = await asyncio.gather(*(one(self.upstreams[n]) for n in names))
        for name, ok in zip(names, results, strict=True):
            if ok:
                self.mark_up(self.upstreams[name])
        return dict(zip(names, results, strict=True))


def create_router_app(plan: DeployPlan, config: RouterConfig | None = None, *, api_key: str | None = None):
    """The FastAPI app of the router; `app.state.router` is its `Router`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    from suntool.serve import protocol
    from suntool.serve.app import install_api_key, install_openai_errors

    router = Router(plan, config)
    app = FastAPI(title="suntool router", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router
    install_openai_errors(app)
    install_api_key(app, api_key)
    created = int(time.time())
    models = {m.name: m for m in plan.models}

    @app.get("/health")
    async def health():
        states = await router.probe()
        serving = {m.name: any(states[n] for n in m.prefill_pool) and any(states[n] for n in m.decode_pool)
                   for m in plan.models}
        ok = all(serving.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "models": serving, "instances": states},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(router.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": m.name, "object": "model", "created": created, "owned_by": "suntool", "root": m.artifact,
                 "max_model_len": m.max_model_len, "prefill_instances": list(m.prefill_pool),
                 "decode_instances": list(m.decode_pool)} for m in plan.models]
        return {"object": "list", "data": data}

    async def generate(request: Request, path: str, chat: bool):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad_request(f"the request body is not valid JSON: {err}") from err
        req = protocol.parse_request(body, chat=chat)
        model = models.get(req.model)
        if model is None:
            raise APIError(404, f"model {req.model!r} is not served here; GET /v1/models lists {sorted(models)}",
                           type="not_found_error", param="model", code="model_not_found")
        try:
            response = await router.handle(path, body, model, req.stream)
        except APIError as err:
            router.metrics.requests.labels(model.name, str(err.status)).inc()
            raise
        if not req.stream or response.status_code != 200:
            router.metrics.requests.labels(model.name, str(response.status_code)).inc()
        return response

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "/v1/completions", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "/v1/chat/completions", chat=True)

    return app


class BackgroundRouter:
    """Serve the router from a thread: `with BackgroundRouter(plan) as router: router.url`."""

    def __init__(self, plan: DeployPlan, config: RouterConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, api_key: str | None = None):
        from suntool.serve.app import _uvicorn_kwargs, _uvicorn_server, bind_socket, url_of

        self.app = create_router_app(plan, config, api_key=api_key)
        self.router: Router = self.app.state.router
        self.sock = bind_socket(host, port)
        self.url = url_of(self.sock)
        self.server = _uvicorn_server(self.app, _uvicorn_kwargs("warning", 10.0))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="suntool-router")

    def __enter__(self) -> BackgroundRouter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def serve_router(plan: DeployPlan, *, host: str, port: int, api_key: str | None = None,
                 config: RouterConfig | None = None, on_ready=None) -> None:
    """Serve the router in this thread until SIGTERM/SIGINT (then drain and return)."""
    from suntool.serve.app import _uvicorn_kwargs, _uvicorn_server, bind_socket, url_of

    sock = bind_socket(host, port)
    try:
        app = create_router_app(plan, config, api_key=api_key)
        server = _uvicorn_server(app, _uvicorn_kwargs("warning", 30.0))
        if on_ready is not None:
            on_ready(url_of(sock))
        server.run(sockets=[sock])
    finally:
        sock.close()
