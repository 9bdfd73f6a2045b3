"""`suntool deploy vllm` on real vLLM (CPU build, `.venv-vllm`): SUN with two task prefill halves, one decode.

Two SUN task artifacts with different prefill halves and one shared decode half are deployed
with the suntool connector (2 prefill instances + 1 decode instance, fp32, `--enforce-eager`):
greedy answers through the router equal `suntool generate` on each artifact — for short
prompts (below vLLM's 128-token CPU block) and one crossing a block — and the decode
instance's metrics show every prompt token but the last arrived over the connector; the
same prompt sent to both models gives each its own answer; and vLLM's own `ExampleConnector`
is shown to get this wrong (the collision the suntool connector removes).
Run through `make test-vllm` (marker `vllm`).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.deploy_helpers import (
    PROMPTS,
    assert_same_answer,
    build_vllm_checkpoint,
    external_tokens,
    post,
    prompt_length,
    reference,
    running_deployment,
    stream_answer,
)
from tests.test_serve_engine import make_task_artifacts

pytestmark = pytest.mark.vllm
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def sun(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-sun")
    checkpoint = build_vllm_checkpoint(root / "base")
    arts = dict(zip(["math", "code"], make_task_artifacts(checkpoint, root, ["math", "code"]), strict=True))
    with running_deployment(arts.values(), root / "plan", base_port=18400) as deployment:
        yield deployment, arts


def completion(url: str, model: str, prompt: str, **extra) -> dict:
    status, body = post(url + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS,
                                                  "temperature": 0, "return_token_ids": True, **extra})
    assert status == 200, body
    return body


def test_plan_is_two_prefill_instances_and_one_shared_decode(sun):
    deployment, _ = sun
    plan = deployment.plan
    assert [(i.name, i.kv_role) for i in plan.instances] == [
        ("prefill-math", "kv_producer"), ("prefill-code", "kv_producer"), ("decode-0", "kv_consumer")]
    assert {m.name: m.decode_pool for m in plan.models} == {"math": ("decode-0",), "code": ("decode-0",)}
    assert plan.model("math").kv_key != plan.model("code").kv_key


def test_each_task_equals_suntool_generate_and_its_kv_came_over_the_connector(sun):
    deployment, arts = sun
    decode_url = deployment.plan.instance("decode-0").url
    before = external_tokens(decode_url)
    expected_external = 0
    answers = {}
    for name, art in arts.items():
        for prompt in PROMPTS:
            ref = reference(art, prompt, MAX_TOKENS)
            body = completion(deployment.url, name, prompt)
            choice = body["choices"][0]
            assert body["model"] == name
            assert_same_answer(choice, ref, (name, prompt))
            assert body["usage"]["completion_tokens"] == len(ref.tokens)
            assert body["usage"]["prompt_tokens"] == ref.prompt_tokens == prompt_length(art, prompt)
            expected_external += ref.prompt_tokens - 1  # all but the last prompt token, short prompts included
            answers[name, prompt] = ref.tokens
    assert external_tokens(decode_url) - before == expected_external
    # the two task models really differ on these prompts, so equality above is not a coincidence
    assert any(answers["math", p] != answers["code", p] for p in PROMPTS)


def test_streaming_and_chat_equal_suntool_generate(sun):
    deployment, arts = sun
    from suntool.artifact import load_artifact
    from suntool.generation import generate_texts
    from suntool.handoff import SamplingConfig

    art = arts["code"]
    request = urllib.request.Request(
        deployment.url + "/v1/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "code", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0,
                         "stream": True, "return_token_ids": True}).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = [line.decode().strip() for line in response if line.strip()]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["model"] == "code" for c in chunks)
    assert_same_answer(stream_answer(chunks), reference(art, PROMPTS[0], MAX_TOKENS))

    loaded = load_artifact(art, kernels=False)
    question = "What is 12 plus 30?"
    ref = generate_texts(loaded, [question], SamplingConfig(max_new_tokens=MAX_TOKENS), chat=True)[0]
    status, body = post(deployment.url + "/v1/chat/completions", {
        "model": "code", "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS,
        "temperature": 0})
    assert status == 200, body
    assert body["model"] == "code"
    assert_same_answer(body["choices"][0], ref)
    assert body["usage"]["prompt_tokens"] == ref.prompt_tokens


def test_same_prompt_two_models_each_gets_its_own_answer(sun):
    deployment, arts = sun
    prompt = "Alice has 3 apples and buys 4 more."
    refs = {name: reference(art, prompt, MAX_TOKENS) for name, art in arts.items()}
    assert refs["math"].tokens != refs["code"].tokens
    for _ in range(2):  # the second round finds both models' K/V already stored under the same prompt
        for name in ("code", "math"):
            assert_same_answer(completion(deployment.url, name, prompt)["choices"][0], refs[name])


def test_the_key_not_the_prompt_selects_the_kv(sun, tmp_path):
    """At the decode instance, the same prompt with math's key answers math's answer, with code's key code's.

    A prompt-only key (vLLM's ExampleConnector) would hand both requests whichever K/V was stored
    first; without a key the decode instance loads nothing and recomputes with the decode half.
    """
    deployment, arts = sun
    prompt = "Question: what is 12 plus 30? Answer:"
    decode = deployment.plan.instance("decode-0")
    for name in ("math", "code"):  # store both models' K/V of this prompt through the router
        completion(deployment.url, name, prompt)
    for name, art in arts.items():
        key = deployment.plan.model(name).kv_key
        status, body = post(decode.url + "/v1/completions", {
            "model": decode.served_name, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "kv_transfer_params": {"suntool_kv_key": key}, "cache_salt": key, "return_token_ids": True})
        assert status == 200, body
        assert_same_answer(body["choices"][0], reference(art, prompt, MAX_TOKENS))
    status, body = post(decode.url + "/v1/completions", {
        "model": decode.served_name, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
        "return_token_ids": True})
    assert status == 200, body
    from suntool.artifact import open_artifact

    plain = reference(open_artifact(arts["math"]).decode_dir, prompt, MAX_TOKENS)  # the decode half alone
    assert_same_answer(body["choices"][0], plain)
