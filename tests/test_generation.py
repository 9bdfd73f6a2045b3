"""Text-level generation over an artifact: equals HF generate, streams, honours stop strings."""

from __future__ import annotations

import pytest
import torch

from suntool.artifact import load_artifact
from suntool.generation import generate_texts, render_prompt, stream_text
from suntool.handoff import SamplingConfig
from suntool.split import SplitConfig, split

PROMPTS = ["Paris is the capital", "def add(a, b):", "Question: what is 12 plus 30? Answer:"]


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "art"
    split(SplitConfig(model=str(tiny_checkpoints["qwen3"]), out=out))
    return load_artifact(out)


def test_batch_text_equals_hf_generate(artifact):
    tokenizer, model = artifact.tokenizer, artifact.decode_model
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    reference = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    results = generate_texts(artifact, PROMPTS, SamplingConfig(max_new_tokens=12))
    for row, result in enumerate(results):
        expected = reference[row, batch["input_ids"].shape[1] :].tolist()
        assert list(result.tokens) == expected[: len(result.tokens)]
        assert result.text == tokenizer.decode(result.tokens, skip_special_tokens=True)
        assert result.prompt_tokens == int(batch["attention_mask"][row].sum())


def test_stream_equals_batch(artifact):
    config = SamplingConfig(max_new_tokens=16)
    for prompt in PROMPTS:
        pieces = list(stream_text(artifact, prompt, config))
        assert "".join(pieces) == generate_texts(artifact, [prompt], config)[0].text


def test_stop_strings_cut_the_text(artifact):
    free = generate_texts(artifact, PROMPTS[:1], SamplingConfig(max_new_tokens=16, eos_token_ids=()))[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = generate_texts(artifact, PROMPTS[:1], SamplingConfig(max_new_tokens=16, stop_strings=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    streamed = "".join(stream_text(artifact, PROMPTS[0], SamplingConfig(max_new_tokens=16, stop_strings=(stop,))))
    assert streamed == cut.text


def test_chat_template_is_applied(artifact):
    rendered = render_prompt(artifact.tokenizer, "hi", chat=True)
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>") and rendered.endswith("assistant\n")
    config = SamplingConfig(max_new_tokens=4)
    chat = generate_texts(artifact, ["hi"], config, chat=True)[0]
    ids = artifact.tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = artifact.decode_model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :]
    assert list(chat.tokens) == expected.tolist()[: len(chat.tokens)]
