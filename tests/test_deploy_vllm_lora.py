"""SUN-LoRA on real vLLM (CPU build): `--lora` puts every task adapter on one prefill instance.

Two SUN-LoRA task artifacts (PEFT LoRA adapters on the one base prefill half, random non-zero
weights so they really differ) and the shared decode half: one prefill instance holding both
adapters (`--enable-lora --lora-modules`) and one decode instance with no LoRA. Greedy answers
through the router equal `suntool generate` (which merges each adapter into the prefill half),
and the two adapters' K/V never mix. Run through `make test-vllm`.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from suntool.manifest import MANIFEST_NAME, read_manifest
from suntool.split import SplitConfig, split
from tests.deploy_helpers import (
    PROMPTS,
    assert_same_answer,
    build_vllm_checkpoint,
    external_tokens,
    post,
    reference,
    running_deployment,
)

pytestmark = pytest.mark.vllm
MAX_TOKENS = 8


def lora_artifact(base, target, seed: int):
    """A copy of the SUN split `base` whose task prefill half carries a random LoRA adapter (r=8)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from suntool.checkpoint import load_model

    shutil.copytree(base, target)
    manifest = read_manifest(target)
    torch.manual_seed(seed)
    model = load_model(manifest.prefill.resolve(target), dtype="float32")
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    peft.save_pretrained(target / "adapter")
    entry = replace(manifest.prefill, adapter="adapter")
    (target / MANIFEST_NAME).write_text(manifest.with_half("prefill", entry).to_json(), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def sun_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-lora")
    checkpoint = build_vllm_checkpoint(root / "base")
    split(SplitConfig(model=str(checkpoint), out=root / "split", mode="sun"))
    arts = {name: lora_artifact(root / "split", root / name, seed) for seed, name in enumerate(["math", "code"])}
    with running_deployment(arts.values(), root / "plan", base_port=18480, lora=True) as deployment:
        yield deployment, arts


def test_adapters_on_one_prefill_instance_equal_suntool_generate(sun_lora):
    deployment, arts = sun_lora
    plan = deployment.plan
    assert [i.name for i in plan.instances] == ["prefill-lora-0", "decode-0"]
    assert [name for name, _ in plan.instance("prefill-lora-0").lora_modules] == ["math", "code"]
    decode_url = plan.instance("decode-0").url
    before, expected = external_tokens(decode_url), 0
    answers = {}
    for prompt in PROMPTS[:2]:
        for name, art in arts.items():
            ref = reference(art, prompt, MAX_TOKENS)
            status, body = post(deployment.url + "/v1/completions", {
                "model": name, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                "return_token_ids": True})
            assert status == 200, body
            assert_same_answer(body["choices"][0], ref, (name, prompt))
            answers[name, prompt] = ref.tokens
            expected += ref.prompt_tokens - 1
    assert external_tokens(decode_url) - before == expected
    assert any(answers["math", p] != answers["code", p] for p in PROMPTS[:2])  # the adapters really differ
