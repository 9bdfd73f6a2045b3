"""Affine-Scaled Attention: exact at conversion, trains W_a and α_ma, saves and reloads."""

from __future__ import annotations

import pytest
import torch

from suntool.affine_attention import convert_to_affine, phi
from suntool.checkpoint import load_model
from suntool.errors import SuntoolError
from suntool.handoff import SamplingConfig, prefill_decode
from tests.test_handoff import padded_batch
from tests.tiny_models import EOS_ID, PAD_ID, build_model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "phi3"])
def test_conversion_is_exact(arch):
    model = build_model(arch)
    ids, mask = padded_batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        convert_to_affine(model)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "suntool_affine"
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_formula_against_a_direct_computation():
    """α·softmax(QKᵀ/√d)V + (α_ma − α)·mean(V over visible keys), computed by hand for one layer."""
    model = convert_to_affine(build_model("llama"))
    attention = model.model.layers[0].self_attn
    torch.manual_seed(0)
    with torch.no_grad():
        attention.affine_alpha.weight.normal_(0, 1.0)
        attention.affine_alpha.bias.normal_(0, 1.0)
        attention.alpha_ma.copy_(torch.tensor([0.2, 0.5, 0.9, 0.7]))
    heads, head_dim, kv_heads = 4, 16, 2
    x = torch.randn(2, 6, 64)
    q = attention.q_proj(x).view(2, 6, heads, head_dim).transpose(1, 2)
    k = attention.k_proj(x).view(2, 6, kv_heads, head_dim).transpose(1, 2)
    v = attention.v_proj(x).view(2, 6, kv_heads, head_dim).transpose(1, 2)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    counts = causal.sum(-1, keepdim=True)
    mean_v = (causal.float() / counts) @ v
    alpha = phi(attention.affine_alpha(x)).transpose(1, 2)[..., None]  # [B, H, T, 1]
    expected = alpha * (probs @ v) + (attention.alpha_ma[None, :, None, None] - alpha) * mean_v
    from suntool.affine_attention import affine_attention_forward

    attention.eval()
    attention._affine_input = x
    ours, _ = affine_attention_forward(attention, q, k[:, ::2], v[:, ::2], None, scaling=head_dim**-0.5)
    torch.testing.assert_close(ours, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_training_moves_alpha_and_its_average_and_round_trips(tmp_path, tokenizer):
    model = convert_to_affine(build_model("llama"))
    model.train()
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "affine_alpha" in n], lr=0.5)
    ids, mask = padded_batch()
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    attention = model.model.layers[1].self_attn
    assert not torch.equal(attention.affine_alpha.bias, torch.full_like(attention.affine_alpha.bias, 5.0))
    assert not torch.equal(attention.alpha_ma, torch.ones_like(attention.alpha_ma))
    model.eval()
    model.save_pretrained(tmp_path / "affine")
    tokenizer.save_pretrained(tmp_path / "affine")
    loaded = load_model(tmp_path / "affine")
    torch.testing.assert_close(loaded.model.layers[1].self_attn.alpha_ma, attention.alpha_ma)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        )
    config = SamplingConfig(max_new_tokens=8, eos_token_ids=(EOS_ID,))
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                               pad_token_id=PAD_ID, eos_token_id=EOS_ID)[:, ids.shape[1]:]
    ours = prefill_decode(loaded, loaded, ids, mask, config, pad_token_id=PAD_ID)
    for row, tokens in enumerate(ours.tokens):
        assert tokens == generated[row, : len(tokens)].tolist()


def test_unsupported_architecture_is_refused():
    with pytest.raises(SuntoolError, match="gemma2"):
        convert_to_affine(build_model("gemma2"))


@pytest.mark.parametrize("method", ["sun", "full"])
def test_finetune_with_affine_attention(method, llama_dir, tmp_path):
    """`suntool finetune --attention affine`: converts the trained half, trains W_a, saves, reloads."""
    from suntool.artifact import load_artifact
    from suntool.train import finetune
    from tests.test_train_support import arith_records, make_artifact, tiny_config, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", arith_records(16))
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    out = tmp_path / "affine"
    finetune(tiny_config(source, data, out, method=method, attention="affine", lr=1e-2))
    loaded = load_artifact(out)
    trained = loaded.prefill_model
    assert trained.config.suntool_attention == "affine"
    bias = trained.model.layers[0].self_attn.affine_alpha.bias
    assert not torch.equal(bias, torch.full_like(bias, 5.0))  # α moved away from its exact-identity init
    from suntool.generation import generate_texts

    assert generate_texts(loaded, ["Question: 2 plus 3?"], SamplingConfig(max_new_tokens=3))[0].tokens
