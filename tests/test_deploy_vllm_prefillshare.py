"""`suntool deploy vllm` on real vLLM (CPU build): PrefillShare, and an instance killed mid-stream.

Two PrefillShare task artifacts (one shared prefill half, two trained decode halves) are deployed
with the suntool connector: one shared prefill instance, one decode instance per task (fp32,
`--enforce-eager`). Greedy answers through the router equal `suntool generate`; both decode
instances take the prompt K/V over the connector; the same prompt sent to both models is
prefilled once (one stored entry, shared — PrefillShare's point) yet each model answers its own.
Then the decode instance of one model is SIGKILLed while it streams: that client gets an error
event, and the router keeps serving the other model. Run through `make test-vllm`.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.deploy_helpers import (
    PROMPTS,
    assert_same_answer,
    build_vllm_checkpoint,
    external_tokens,
    post,
    reference,
    running_deployment,
    stream_answer,
)
from tests.test_serve_engine import make_task_artifacts

pytestmark = pytest.mark.vllm
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def prefillshare(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-ps")
    checkpoint = build_vllm_checkpoint(root / "base")
    names = ["math", "code"]
    arts = dict(zip(names, make_task_artifacts(checkpoint, root, names, mode="prefillshare"), strict=True))
    with running_deployment(arts.values(), root / "plan", base_port=18450) as deployment:
        yield deployment, arts


def test_each_task_equals_suntool_generate_through_the_shared_prefill(prefillshare):
    deployment, arts = prefillshare
    plan = deployment.plan
    assert [(i.name, i.kv_role) for i in plan.instances] == [
        ("prefill", "kv_producer"), ("decode-math", "kv_consumer"), ("decode-code", "kv_consumer")]
    before = {name: external_tokens(plan.instance(f"decode-{name}").url) for name in arts}
    expected = dict.fromkeys(arts, 0)
    for name, art in arts.items():
        for prompt in PROMPTS:
            ref = reference(art, prompt, MAX_TOKENS)
            status, body = post(deployment.url + "/v1/completions", {
                "model": name, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True})
            assert status == 200, body
            assert body["model"] == name
            assert_same_answer(body["choices"][0], ref, (name, prompt))
            expected[name] += ref.prompt_tokens - 1
    for name in arts:
        assert external_tokens(plan.instance(f"decode-{name}").url) - before[name] == expected[name]


def test_one_prefill_serves_both_models_own_answers(prefillshare):
    deployment, arts = prefillshare
    prompt = "Split the model into a prefill half and a decode half"
    kv_dir = deployment.plan.kv_dir
    from pathlib import Path

    entries = set(Path(kv_dir).iterdir())
    answers = {}
    for name in arts:
        status, body = post(deployment.url + "/v1/completions", {
            "model": name, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True})
        assert status == 200, body
        answers[name] = body["choices"][0]["token_ids"]
        assert_same_answer(body["choices"][0], reference(arts[name], prompt, MAX_TOKENS))
    assert answers["math"] != answers["code"]
    assert len(set(Path(kv_dir).iterdir()) - entries) == 1  # the shared prefill half's K/V, stored once


def test_decode_instance_killed_mid_stream(prefillshare):
    deployment, arts = prefillshare
    body = {"model": "math", "prompt": "0 1 2", "max_tokens": 480, "ignore_eos": True, "temperature": 0,
            "stream": True}
    lines = []
    with httpx.stream("POST", deployment.url + "/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(line)
            if len(lines) == 1:
                deployment.kill("decode-math")
    assert json.loads(lines[0][6:])["choices"][0]["text"] is not None
    assert "data: [DONE]" not in lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["status"] == 502 and "decode-math" in error["message"]

    # the other model is served as before, streamed and plain
    ref = reference(arts["code"], PROMPTS[0], MAX_TOKENS)
    status, plain = post(deployment.url + "/v1/completions", {
        "model": "code", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True})
    assert status == 200
    assert_same_answer(plain["choices"][0], ref)
    with httpx.stream("POST", deployment.url + "/v1/completions", timeout=120, json={
            "model": "code", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "return_token_ids": True}) as response:
        chunks = [line for line in response.iter_lines() if line]
    assert chunks[-1] == "data: [DONE]"
    assert_same_answer(stream_answer([json.loads(c[6:]) for c in chunks[:-1]]), ref)
    # the dead model's requests fail fast and clearly; health says which instance is down
    status, dead = post(deployment.url + "/v1/completions", {"model": "math", "prompt": "hi", "max_tokens": 2})
    assert status == 503 and "decode" in dead["error"]["message"]
    health = httpx.get(deployment.url + "/health", timeout=30)
    assert health.status_code == 503
    assert health.json()["models"] == {"math": False, "code": True}
    assert health.json()["instances"]["decode-math"] is False
