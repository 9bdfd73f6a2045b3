"""The HTTP server on a real uvicorn on a free loopback port: the `openai` client, streaming, errors,
API keys, admission control (429), disconnects freeing KV blocks, metrics."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from suntool.artifact import load_artifact
from suntool.generation import generate_texts
from suntool.handoff import SamplingConfig, prefill_decode
from suntool.serve.app import BackgroundServer, ServeConfig
from suntool.serve.engine import Engine, EngineConfig
from suntool.serve.metrics import ServerMetrics
from tests.test_serve_engine import make_task_artifacts

PROMPT = "Question: what is 12 plus 30? Answer:"


class TestMetrics(ServerMetrics):
    """Metrics with two test hooks: a gate that parks the decode worker, and events per finish reason."""

    __test__ = False

    def __init__(self):
        super().__init__()
        self.open = threading.Event()
        self.open.set()
        self.stepping = threading.Event()
        self.admitted = threading.Semaphore(0)
        self.finished: dict[str, threading.Semaphore] = {}
        self.lock = threading.Lock()

    def finished_event(self, reason: str) -> threading.Semaphore:
        with self.lock:
            return self.finished.setdefault(reason, threading.Semaphore(0))

    def on_admitted(self, seq) -> None:
        super().on_admitted(seq)
        self.admitted.release()

    def on_step(self, batch_size: int, num_models: int) -> None:
        super().on_step(batch_size, num_models)
        self.stepping.set()
        assert self.open.wait(60)

    def on_finish(self, seq) -> None:
        super().on_finish(seq)
        self.finished_event(seq.finish_reason).release()


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-api")
    return dict(zip(["math", "code"], make_task_artifacts(tiny_checkpoints["llama"], root, ["math", "code"]),
                    strict=True))


@pytest.fixture(scope="module")
def server(artifacts):
    metrics = TestMetrics()
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(decode_workers=2),
                                   observer=metrics)
    metrics.attach(engine)
    with BackgroundServer(engine) as running:
        yield running
    engine.close()


@pytest.fixture(scope="module")
def references(artifacts):
    return {name: load_artifact(path) for name, path in artifacts.items()}


def openai_client(server, api_key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_binds_loopback_by_default(server):
    assert ServeConfig(artifacts=(), engine=EngineConfig()).host == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")


def test_openai_client_completions_plain_and_streaming(server, references):
    client = openai_client(server)
    assert sorted(m.id for m in client.models.list().data) == ["code", "math"]
    for name, loaded in references.items():
        expected = generate_texts(loaded, [PROMPT], SamplingConfig(max_new_tokens=12))[0]
        plain = client.completions.create(model=name, prompt=PROMPT, max_tokens=12)
        assert plain.choices[0].text == expected.text
        assert plain.choices[0].finish_reason == expected.finish_reason
        assert plain.usage.prompt_tokens == expected.prompt_tokens
        assert plain.usage.completion_tokens == len(expected.tokens)
        chunks = list(client.completions.create(model=name, prompt=PROMPT, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.tokens)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason


def test_openai_client_chat_plain_and_streaming(server, references):
    client = openai_client(server)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 12 plus 30?"}]
    loaded = references["code"]
    rendered = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = loaded.tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = prefill_decode(loaded.prefill_model, loaded.decode_model, ids, config=SamplingConfig(max_new_tokens=10))
    plain = client.chat.completions.create(model="code", messages=messages, max_tokens=10)
    assert plain.usage.completion_tokens == len(expected.tokens[0])
    text = loaded.tokenizer.decode(expected.tokens[0], skip_special_tokens=True)
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].message.content == text
    assert plain.usage.prompt_tokens == ids.shape[1]
    stream = client.chat.completions.create(model="code", messages=messages, max_tokens=10, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_stop_strings_and_token_prompts(server, references):
    client = openai_client(server)
    free = client.completions.create(model="math", prompt=PROMPT, max_tokens=16, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    assert len(text) > 4
    cut = client.completions.create(model="math", prompt=PROMPT, max_tokens=16, stop=[text[2:4]])
    assert cut.choices[0].text == text[: text.index(text[2:4])] and cut.choices[0].finish_reason == "stop"
    ids = references["math"].tokenizer(PROMPT)["input_ids"]
    by_ids = client.completions.create(model="math", prompt=ids, max_tokens=16, extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "hi"}, 404, "model"),
        ({"model": "math", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "math", "prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
        ({"model": "math", "prompt": "hi " * 400}, 400, "prompt"),
        ({"model": "math", "prompt": "hi", "max_tokens": 100000}, 400, "prompt"),
        ({"model": "math", "prompt": "hi", "n": 2}, 400, "n"),
        ({"model": "math", "prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"model": "math", "prompt": "hi", "logprobs": 2}, 400, "logprobs"),
        ({"model": "math"}, 400, "prompt"),
        ({"prompt": "hi"}, 400, "model"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status
    assert error_of(response)["param"] == param


def test_bad_json_unknown_route_and_chat_errors(server):
    response = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in error_of(response)["message"]
    assert httpx.get(server.url + "/v1/nothing", timeout=30).status_code == 404
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": "math", "messages": []}, timeout=30)
    assert response.status_code == 400 and error_of(response)["param"] == "messages"
    long = [{"role": "user", "content": "hi " * 400}]
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": "math", "messages": long}, timeout=30)
    assert response.status_code == 400 and error_of(response)["code"] == "context_length_exceeded"


def test_api_key_is_required_when_set(server):
    with BackgroundServer(server.engine, api_key="s3cret") as keyed:
        url = keyed.url + "/v1/completions"
        body = {"model": "math", "prompt": "hi", "max_tokens": 2}
        missing = httpx.post(url, json=body, timeout=30)
        assert missing.status_code == 401 and error_of(missing)["type"] == "authentication_error"
        wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        assert httpx.get(keyed.url + "/v1/models", timeout=30).status_code == 401
        right = openai_client(keyed, api_key="s3cret").completions.create(model="math", prompt="hi", max_tokens=2)
        assert right.usage.completion_tokens >= 1
        assert httpx.get(keyed.url + "/health", timeout=30).status_code == 200


def test_health_and_metrics(server):
    openai_client(server).completions.create(model="math", prompt=PROMPT, max_tokens=4)
    health = httpx.get(server.url + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["models"] == ["code", "math"]
    text = httpx.get(server.url + "/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['suntool_time_to_first_token_seconds_count{model="math"}'] >= 1
    assert samples['suntool_time_per_output_token_seconds_count{model="math"}'] >= 1
    assert samples['suntool_queue_time_seconds_count{model="math"}'] >= 1
    assert samples["suntool_decode_batch_size_count"] >= 1
    assert samples['suntool_generation_tokens_total{model="math"}'] >= 4
    assert samples["suntool_kv_blocks_used"] == 0 and samples["suntool_kv_blocks_free"] > 0
    assert "suntool_requests_running" in samples and "suntool_requests_waiting" in samples


def test_client_disconnect_mid_stream_frees_blocks(server):
    metrics, engine = server.engine.observer, server.engine
    aborted = metrics.finished_event("abort")
    body = {"model": "math", "prompt": PROMPT, "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        assert engine.stats().kv_blocks_used > 0
    assert aborted.acquire(timeout=30)  # the server noticed and aborted it
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == 0


def test_client_disconnect_while_waiting_frees_blocks(server):
    metrics, engine = server.engine.observer, server.engine
    aborted = metrics.finished_event("abort")
    metrics.stepping.clear()
    metrics.open.clear()  # park the decode worker: the request cannot finish before the client leaves
    try:
        body = {"model": "code", "prompt": PROMPT, "max_tokens": 50}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        assert metrics.stepping.is_set()
    finally:
        metrics.open.set()
    assert aborted.acquire(timeout=30)
    assert engine.stats().kv_blocks_used == 0


def test_queue_full_answers_429_with_retry_after(artifacts):
    metrics = TestMetrics()
    config = EngineConfig(kv_blocks=8, block_size=4, max_queue=1)
    engine = Engine.from_artifacts([artifacts["math"]], config=config, observer=metrics)
    metrics.attach(engine)
    metrics.open.clear()
    try:
        with BackgroundServer(engine) as running:
            url = running.url + "/v1/completions"
            hog_body = {"model": "math", "prompt": [5] * 25, "max_tokens": 7, "ignore_eos": True, "stream": True}
            results = {}

            def send(key, body):
                results[key] = httpx.post(url, json=body, timeout=60)

            hog = threading.Thread(target=send, args=("hog", hog_body))
            hog.start()
            assert metrics.admitted.acquire(timeout=30) and metrics.stepping.wait(30)  # hog holds 7 of 8 blocks
            queued = threading.Thread(target=send, args=("queued", {"model": "math", "prompt": [6] * 10,
                                                                      "max_tokens": 2}))
            queued.start()
            assert metrics.admitted.acquire(timeout=30)  # waiting for blocks: the queue (1) is full
            refused = httpx.post(url, json={"model": "math", "prompt": "hi", "max_tokens": 2}, timeout=30)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert error_of(refused)["type"] == "rate_limit_error"
            metrics.open.set()
            hog.join(60)
            queued.join(60)
            assert results["hog"].status_code == 200 and "[DONE]" in results["hog"].text
            assert results["queued"].status_code == 200
            assert engine.stats().kv_blocks_used == 0
    finally:
        metrics.open.set()
        engine.close()
