"""The shared completion loss: split == monolithic with equal weights, and where gradients go."""

from __future__ import annotations

import pytest

from suntool.train.data import collate, load_examples
from tests.test_train_support import arith_records, make_artifact, one_torch_thread, tiny_config, write_jsonl
from tests.tiny_models import ARCHITECTURES


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def _setup(artifact, data, tmp_path, method, **changes):
    from suntool.artifact import open_artifact
    from suntool.checkpoint import load_tokenizer
    from suntool.train.distributed import setup_distributed
    from suntool.train.methods import build_method

    config = tiny_config(artifact, data, tmp_path / f"out-{method}", method=method, **changes)
    ref = open_artifact(artifact)
    tokenizer = load_tokenizer(ref.prefill_dir)
    return build_method(config, ref, setup_distributed("cpu")), tokenizer


def _batch(tokenizer, data_path):
    examples = load_examples(data_path, tokenizer, max_length=128).examples
    # mixed lengths on both sides, a one-token prompt included (its prefill row is all padding)
    return collate([examples[0], examples[5], examples[-1]], pad_id=tokenizer.pad_token_id)


@pytest.fixture
def mixed_data(tmp_path):
    records = arith_records(6) + [{"prompt": "Paris", "completion": " is the capital of France."}]
    return write_jsonl(tmp_path / "mixed.jsonl", records)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("first_token", ["decode", "prefill"])
def test_split_loss_equals_monolithic_loss(arch, first_token, tiny_checkpoints, mixed_data, tmp_path):
    """With the same weights in both halves, SUN's and PrefillShare's loss is the full model's."""
    artifact = make_artifact(tiny_checkpoints[arch], tmp_path / "sun", "sun", first_token)
    full, tokenizer = _setup(artifact, mixed_data, tmp_path, "full")
    sun, _ = _setup(artifact, mixed_data, tmp_path, "sun")
    batch = _batch(tokenizer, mixed_data)
    loss_full, count_full = full.loss_sum(batch)
    loss_sun, count_sun = sun.loss_sum(batch)
    assert count_full == count_sun == batch.completion_tokens
    assert float(loss_sun.detach()) == pytest.approx(float(loss_full.detach()), rel=1e-5)
    if arch == "llama":
        shared = make_artifact(tiny_checkpoints[arch], tmp_path / "ps", "prefillshare", first_token)
        ps, _ = _setup(shared, mixed_data, tmp_path, "prefillshare")
        assert float(ps.loss_sum(batch)[0].detach()) == pytest.approx(float(loss_full.detach()), rel=1e-5)


def _grads(model) -> dict[str, float]:
    return {name: (0.0 if p.grad is None else float(p.grad.abs().sum())) for name, p in model.named_parameters()}


def test_sun_gradients_reach_the_prefill_half_only_through_kv(llama_dir, mixed_data, tmp_path):
    artifact = make_artifact(llama_dir, tmp_path / "sun", "sun")
    setup, tokenizer = _setup(artifact, mixed_data, tmp_path, "sun")
    loss, count = setup.loss_sum(_batch(tokenizer, mixed_data))
    (loss / count).backward()
    grads = _grads(setup.trainable)
    assert all(not p.requires_grad and p.grad is None for p in setup.frozen.parameters())
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                 "model.embed_tokens.weight"):
        assert grads[name] > 0, name
    # The decode convention never reads the prefill half's logits, nor anything after the last layer's K/V.
    for name in ("lm_head.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert grads[name] == 0, name


def test_sun_with_prefill_first_token_trains_the_prefill_head(llama_dir, mixed_data, tmp_path):
    artifact = make_artifact(llama_dir, tmp_path / "sun", "sun", first_token="prefill")
    setup, tokenizer = _setup(artifact, mixed_data, tmp_path, "sun")
    loss, count = setup.loss_sum(_batch(tokenizer, mixed_data))
    (loss / count).backward()
    grads = _grads(setup.trainable)
    assert grads["lm_head.weight"] > 0 and grads["model.layers.1.mlp.down_proj.weight"] > 0


def test_prefillshare_trains_the_decode_half_with_frozen_prompt_kv(llama_dir, mixed_data, tmp_path):
    artifact = make_artifact(llama_dir, tmp_path / "ps", "prefillshare")
    setup, tokenizer = _setup(artifact, mixed_data, tmp_path, "prefillshare")
    loss, count = setup.loss_sum(_batch(tokenizer, mixed_data))
    (loss / count).backward()
    assert setup.task_half == "decode"
    assert all(p.grad is None for p in setup.frozen.parameters())
    grads = _grads(setup.trainable)
    assert grads["lm_head.weight"] > 0 and grads["model.layers.1.mlp.down_proj.weight"] > 0
    assert grads["model.layers.0.self_attn.k_proj.weight"] > 0  # completion tokens' own K/V


@pytest.mark.parametrize("method", ["sun", "prefillshare", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(method, llama_dir, mixed_data, tmp_path):
    mode = "prefillshare" if method == "prefillshare" else "sun"
    artifact = make_artifact(llama_dir, tmp_path / "art", mode)
    results = []
    for checkpointing in (False, True):
        setup, tokenizer = _setup(artifact, mixed_data, tmp_path, method, gradient_checkpointing=checkpointing)
        loss, count = setup.loss_sum(_batch(tokenizer, mixed_data))
        (loss / count).backward()
        results.append((float(loss.detach()), {n: p.grad.clone() for n, p in setup.trainable.named_parameters()
                                      if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name].allclose(grads_b[name], rtol=1e-4, atol=1e-6), name


def test_method_must_fit_the_artifact_mode(llama_dir, mixed_data, tmp_path):
    from suntool.errors import SuntoolError

    artifact = make_artifact(llama_dir, tmp_path / "ps", "prefillshare")
    with pytest.raises(SuntoolError, match="prefillshare artifact, but --method sun.*--mode sun"):
        _setup(artifact, mixed_data, tmp_path, "sun")
    with pytest.raises(SuntoolError, match="monolithic artifact, but --method prefillshare.*suntool split"):
        _setup(llama_dir, mixed_data, tmp_path, "prefillshare")
