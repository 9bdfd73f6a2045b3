"""The embedded SmolLM2-135M: converted once from the PyPI GGUF, split, answers like HF generate."""

from __future__ import annotations

import pytest
import torch

from suntool.artifact import load_artifact
from suntool.generation import encode, generate_texts, render_prompt
from suntool.handoff import SamplingConfig
from suntool.models import builtin_checkpoint, resolve_model
from suntool.split import SplitConfig, split

pytestmark = pytest.mark.slow


def test_builtin_conversion_is_cached():
    path = builtin_checkpoint("smollm2-135m")
    assert (path / "config.json").is_file() and (path / "model.safetensors").stat().st_size > 200e6
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again


def test_split_embedded_model_answers_like_generate(tmp_path):
    split(SplitConfig(model="smollm2-135m", out=tmp_path / "art"))
    artifact = load_artifact(tmp_path / "art", dtype="float32")
    prompts = ["What is the capital of France?", "What is 2 plus 2?"]
    config = SamplingConfig(max_new_tokens=24)
    answers = generate_texts(artifact, prompts, config, chat=True)
    assert "Paris" in answers[0].text
    tokenizer = artifact.tokenizer
    ids, mask = encode(tokenizer, [render_prompt(tokenizer, p, chat=True) for p in prompts], add_special_tokens=False)
    with torch.no_grad():
        reference = artifact.decode_model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    for row, answer in enumerate(answers):
        assert list(answer.tokens) == reference[row, ids.shape[1] :].tolist()[: len(answer.tokens)]
