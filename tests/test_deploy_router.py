"""The deployment router against fake vLLM instances (no vLLM needed): request rewriting, least-loaded decode
routing, streaming relay, and what the client sees when an instance is dead, breaks mid-stream or stalls."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time

import httpx
import pytest
from starlette.requests import Request  # module level: FastAPI resolves the handlers' annotations here

from suntool.deploy.plan import DeployPlan, Instance, RoutedModel
from suntool.deploy.router import BackgroundRouter, RouterConfig


@pytest.fixture(autouse=True)
def _patient_client(monkeypatch):
    """Client timeouts of 30 s instead of httpx's 5 s: a loaded machine can answer slower (the router's own
    timeouts under test are set per test and are much shorter)."""
    for name in ("get", "post"):
        monkeypatch.setattr(httpx, name, functools.partial(getattr(httpx, name), timeout=30))


class FakeInstance:
    """A vLLM-shaped OpenAI server on a free port that records what it was sent.

    Prefill requests (max_tokens=1) answer one token; decode requests answer "abc" (streamed as
    three chunks `delay` s apart). `break_stream` ends a stream after one chunk by raising (the
    connection drops mid-body); `stall` sleeps that long before answering; a prompt "too long"
    gets vLLM's 400.
    """

    def __init__(self, name: str):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, StreamingResponse

        from suntool.serve.app import _uvicorn_kwargs, _uvicorn_server, bind_socket

        self.name, self.bodies = name, []
        self.delay, self.break_stream, self.stall = 0.0, False, 0.0
        app = FastAPI()

        @app.get("/health")
        async def health():
            return {}

        async def answer(request, chat: bool):
            body = await request.json()
            self.bodies.append(body)
            if self.stall:
                await asyncio.sleep(self.stall)
            if body.get("prompt") == "too long":
                return JSONResponse({"error": {"message": "too long", "code": 400}}, status_code=400)
            if body.get("max_tokens") == 1:
                return {"id": "p", "model": body["model"], "choices": [{"text": "x", "finish_reason": "length"}],
                        "kv_transfer_params": {"from": self.name}}
            if not body.get("stream"):
                return {"id": "d", "model": body["model"], "choices": [{"text": "abc", "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}

            async def chunks():
                for i, piece in enumerate("abc"):
                    if i == 1 and self.break_stream:
                        raise RuntimeError("instance died")
                    yield f"data: {json.dumps({'model': body['model'], 'choices': [{'text': piece}]})}\n\n"
                    await asyncio.sleep(self.delay)
                yield "data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await answer(request, False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await answer(request, True)

        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = _uvicorn_server(app, _uvicorn_kwargs("error", 1.0))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def make_plan(instances: dict[str, FakeInstance]) -> DeployPlan:
    def inst(name, half):
        return Instance(name=name, half=half, kv_role="kv_producer" if half == "prefill" else "kv_consumer",
                        model_dir="/m", served_name=name, port=instances[name].port)

    models = tuple(RoutedModel(name=m, artifact=f"/art/{m}", prefill_pool=(f"prefill-{m}",),
                               prefill_model=f"prefill-{m}", decode_pool=("decode-0", "decode-1"),
                               decode_model="decode-0", kv_key=f"key-{m}", max_model_len=512)
                   for m in ("math", "code"))
    return DeployPlan(mode="sun", share=True, connector="example", device="cpu", dtype="float32",
                      vllm_python="/py", kv_dir="/kv", host="127.0.0.1", router_port=0, kv_cache_gib=1,
                      enforce_eager=True, max_model_len=None, vllm_args=(),
                      instances=(inst("prefill-math", "prefill"), inst("prefill-code", "prefill"),
                                 inst("decode-0", "decode"), inst("decode-1", "decode")), models=models)


@pytest.fixture
def fakes():
    instances = {name: FakeInstance(name) for name in ("prefill-math", "prefill-code", "decode-0", "decode-1")}
    yield instances
    for fake in instances.values():
        fake.stop()


@pytest.fixture
def router(fakes):
    with BackgroundRouter(make_plan(fakes), RouterConfig(request_timeout=2.0, retry_after_s=30)) as router:
        deadline = time.time() + 10
        while not router.server.started and time.time() < deadline:
            time.sleep(0.02)
        yield router


def stream_lines(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_prefill_then_decode_with_rewritten_requests(fakes, router):
    response = httpx.post(router.url + "/v1/completions",
                          json={"model": "math", "prompt": "hi", "max_tokens": 7, "temperature": 0})
    assert response.status_code == 200
    assert response.json()["model"] == "math" and response.json()["choices"][0]["text"] == "abc"
    [prefill] = fakes["prefill-math"].bodies
    assert prefill == {"model": "prefill-math", "prompt": "hi", "max_tokens": 1, "temperature": 0,
                       "kv_transfer_params": {"suntool_kv_key": "key-math"}}
    assert not fakes["prefill-code"].bodies
    [decode] = fakes["decode-0"].bodies + fakes["decode-1"].bodies
    assert decode == {"model": "decode-0", "prompt": "hi", "max_tokens": 7, "temperature": 0,
                      "kv_transfer_params": {"suntool_kv_key": "key-math"}, "cache_salt": "key-math"}
    chat = httpx.post(router.url + "/v1/chat/completions", json={
        "model": "code", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5,
        "stream": True, "stream_options": {"include_usage": True}})
    assert chat.status_code == 200
    prefill = fakes["prefill-code"].bodies[-1]
    assert prefill["max_tokens"] == 1 and "max_completion_tokens" not in prefill and "stream" not in prefill
    assert "stream_options" not in prefill


def test_stream_is_relayed_under_the_task_name(router):
    lines = stream_lines(router.url + "/v1/completions", {"model": "code", "prompt": "hi", "stream": True})
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["a", "b", "c"]
    assert {c["model"] for c in chunks} == {"code"}


def test_decode_goes_to_the_least_loaded_instance(fakes, router):
    fakes["decode-0"].delay = fakes["decode-1"].delay = 0.5
    results = []

    def slow():
        results.append(stream_lines(router.url + "/v1/completions", {"model": "math", "prompt": "a", "stream": True}))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)  # the first stream is open when the second arrives
    for thread in threads:
        thread.join(30)
    assert len(fakes["decode-0"].bodies) == len(fakes["decode-1"].bodies) == 1  # one each, not both on one
    assert all(r[-1] == "data: [DONE]" for r in results)


def test_a_dead_instance_is_skipped_and_all_dead_is_503(fakes, router):
    fakes["decode-1"].stop()
    for _ in range(3):
        response = httpx.post(router.url + "/v1/completions", json={"model": "math", "prompt": "hi"})
        assert response.status_code == 200
    assert len(fakes["decode-0"].bodies) == 3
    metrics = httpx.get(router.url + "/metrics").text
    assert 'suntool_router_instance_up{instance="decode-1"} 0.0' in metrics
    assert 'suntool_router_upstream_errors_total{instance="decode-1",kind="connect"}' in metrics
    health = httpx.get(router.url + "/health")
    assert health.status_code == 200 and health.json()["instances"]["decode-1"] is False
    fakes["decode-0"].stop()
    response = httpx.post(router.url + "/v1/completions", json={"model": "math", "prompt": "hi"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "instance_unavailable" and "Retry-After" in response.headers
    assert httpx.get(router.url + "/health").status_code == 503


def test_broken_stream_gives_an_error_event_and_other_requests_go_on(fakes, router):
    fakes["decode-0"].break_stream = fakes["decode-1"].break_stream = True
    lines = stream_lines(router.url + "/v1/completions", {"model": "math", "prompt": "hi", "stream": True})
    assert "data: [DONE]" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["status"] == 502 and error["code"] == "upstream_failed"
    assert json.loads(lines[0][6:])["choices"][0]["text"] == "a"
    fakes["decode-0"].break_stream = fakes["decode-1"].break_stream = False
    router.router.upstreams["decode-0"].down_until = router.router.upstreams["decode-1"].down_until = 0
    lines = stream_lines(router.url + "/v1/completions", {"model": "code", "prompt": "hi", "stream": True})
    assert lines[-1] == "data: [DONE]"


def test_a_stalled_instance_gives_504(fakes, router):
    fakes["prefill-math"].stall = 5.0
    response = httpx.post(router.url + "/v1/completions", json={"model": "math", "prompt": "hi"}, timeout=30)
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert httpx.post(router.url + "/v1/completions", json={"model": "code", "prompt": "hi"}).status_code == 200


def test_errors_of_the_api(fakes, router):
    assert httpx.post(router.url + "/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    bad = httpx.post(router.url + "/v1/completions", content=b"{")
    assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.post(router.url + "/v1/completions", json={"model": "math", "prompt": "x", "n": 2}).status_code == 400
    passed = httpx.post(router.url + "/v1/completions", json={"model": "math", "prompt": "too long"})
    assert passed.status_code == 400 and passed.json()["error"]["message"] == "too long"  # vLLM's own answer
    models = httpx.get(router.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["math", "code"]
    assert models[0]["decode_instances"] == ["decode-0", "decode-1"]


def test_api_key(fakes):
    with BackgroundRouter(make_plan(fakes), api_key="sekret") as router:
        time.sleep(0.3)
        assert httpx.get(router.url + "/v1/models").status_code == 401
        ok = httpx.get(router.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert httpx.get(router.url + "/health").status_code == 200
