"""The central contract: prefill→decode equals `model.generate` for every architecture."""

from __future__ import annotations

import pytest
import torch

from suntool.errors import SuntoolError
from suntool.handoff import SamplingConfig, decode, left_align, prefill, prefill_decode
from tests.tiny_models import ARCHITECTURES, EOS_ID, PAD_ID, build_model

MAX_NEW = 14  # prompt + new tokens run past the sliding windows (8) of Mistral and Gemma


def padded_batch():
    """Three prompts of lengths 9, 5 and 1 (the last one: nothing to prefill), left-padded."""
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 5, 1]
    width = max(lengths)
    ids = torch.full((3, width), PAD_ID)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(3, 300, (length,), generator=gen)
        mask[row, width - length :] = 1
    return ids, mask


def reference(model, ids, mask, **kwargs):
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, output_logits=True,
        return_dict_in_generate=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID, **kwargs,
    )
    return out.sequences[:, ids.shape[1] :], out.logits


def assert_matches(result, ref_tokens, ref_logits):
    for row, tokens in enumerate(result.tokens):
        assert tokens == ref_tokens[row, : len(tokens)].tolist()
        if len(tokens) < MAX_NEW:  # stopped on EOS: generate stopped there too
            assert tokens[-1] == EOS_ID
    assert len(result.logits) == len(ref_logits)
    for step, (ours, theirs) in enumerate(zip(result.logits, ref_logits, strict=True)):
        active = torch.tensor([len(t) > step for t in result.tokens])
        torch.testing.assert_close(ours[active], theirs[active].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("first_token", ["decode", "prefill"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_weights_equal_generate(arch, first_token):
    model = build_model(arch)
    ids, mask = padded_batch()
    ref_tokens, ref_logits = reference(model, ids, mask)
    config = SamplingConfig(max_new_tokens=MAX_NEW, output_logits=True, eos_token_ids=(EOS_ID,))
    result = prefill_decode(model, model, ids, mask, config, first_token=first_token, pad_token_id=PAD_ID)
    assert max(len(t) for t in result.tokens) > 1
    assert_matches(result, ref_tokens, ref_logits)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "mistral"])
def test_different_halves_equal_generate_from_foreign_cache(arch):
    """Prefill with weights A, decode with weights B == B.generate continuing A's cache."""
    model_a, model_b = build_model(arch, seed=0), build_model(arch, seed=1)
    ids, mask = padded_batch()
    with torch.no_grad():
        handoff = prefill(model_a, ids, mask)
        config = SamplingConfig(max_new_tokens=MAX_NEW, output_logits=True, eos_token_ids=(EOS_ID,))
        result = decode(model_b, handoff, config, pad_token_id=PAD_ID)
        foreign = prefill(model_a, ids, mask).cache  # covers all but the last prompt token
    ref_tokens, ref_logits = reference(model_b, ids, mask, cache=foreign)
    assert_matches(result, ref_tokens, ref_logits)
    same_weights = prefill_decode(model_b, model_b, ids, mask, config, pad_token_id=PAD_ID)
    assert same_weights.tokens != result.tokens  # the prefill half's K/V really matter


def test_right_padding_is_realigned():
    model = build_model("llama")
    ids, mask = padded_batch()
    right_ids, right_mask = torch.full_like(ids, PAD_ID), torch.zeros_like(mask)
    for row in range(ids.shape[0]):
        real = ids[row][mask[row] == 1]
        right_ids[row, : len(real)], right_mask[row, : len(real)] = real, 1
    assert torch.equal(left_align(right_ids, right_mask)[0], ids)
    config = SamplingConfig(max_new_tokens=6, eos_token_ids=(EOS_ID,))
    left = prefill_decode(model, model, ids, mask, config, pad_token_id=PAD_ID)
    right = prefill_decode(model, model, right_ids, right_mask, config, pad_token_id=PAD_ID)
    assert left.tokens == right.tokens


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = build_model("qwen2")
    ids, mask = padded_batch()

    def run(**kwargs):
        config = SamplingConfig(max_new_tokens=10, eos_token_ids=(), **kwargs)
        return prefill_decode(model, model, ids, mask, config, pad_token_id=PAD_ID).tokens

    assert run(temperature=1.0, seed=7) == run(temperature=1.0, seed=7)
    assert run(temperature=1.0, seed=7) != run(temperature=1.0, seed=8)
    assert run(temperature=0.7, top_k=1, seed=3) == run()
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run()  # nucleus of one token is argmax
    lengths = [len(t) for t in run(temperature=1.0, seed=1)]
    assert lengths == [10, 10, 10]  # no EOS ids: every row runs to max_new_tokens


def test_stop_check_and_finish_reasons():
    model = build_model("llama")
    ids, mask = padded_batch()
    config = SamplingConfig(max_new_tokens=8, eos_token_ids=())
    stopped = prefill_decode(model, model, ids, mask, config, pad_token_id=PAD_ID, stop_check=lambda row, _t: row == 1)
    assert len(stopped.tokens[1]) == 1 and stopped.finish_reasons[1] == "stop"
    assert len(stopped.tokens[0]) == 8 and stopped.finish_reasons[0] == "length"


def test_bad_inputs_are_user_errors():
    model = build_model("llama")
    with pytest.raises(SuntoolError, match="first_token"):
        prefill(model, torch.ones((1, 3), dtype=torch.long), first_token="both")
    with pytest.raises(SuntoolError, match="empty prompt"):
        prefill(model, torch.ones((2, 3), dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(SuntoolError, match="non-empty"):
        prefill(model, torch.ones((0, 3), dtype=torch.long))
    with pytest.raises(SuntoolError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(SuntoolError, match="top_p"):
        SamplingConfig(top_p=0)


@pytest.mark.parametrize("first_token", ["decode", "prefill"])
def test_continuation_logits_equal_one_full_forward(first_token):
    from suntool.handoff import continuation_logits

    model = build_model("llama")
    ids, mask = padded_batch()
    gen = torch.Generator().manual_seed(5)
    cont = torch.randint(3, 300, (3, 4), generator=gen)
    cont_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    with torch.no_grad():
        handoff = prefill(model, ids, mask, first_token=first_token)
        ours = continuation_logits(model, handoff, cont, cont_mask)
        full_mask = torch.cat([mask, cont_mask], dim=1)
        from suntool.handoff import position_ids_from_mask

        full = model(
            input_ids=torch.cat([ids, cont], dim=1), attention_mask=full_mask,
            position_ids=position_ids_from_mask(full_mask),
        ).logits[:, ids.shape[1] - 1 : -1]
    real = cont_mask.bool()
    torch.testing.assert_close(ours[real], full[real], atol=1e-5, rtol=0)
