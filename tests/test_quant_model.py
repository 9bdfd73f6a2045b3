"""quantize_model -> save_quantized -> load_quantized on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from suntool.errors import CheckpointError, SuntoolError
from suntool.quant import qlinear
from suntool.quant.qlinear import QuantLinear, load_quantized, set_dequant_matmul
from suntool.quant.quantize_model import quantize_model, save_quantized

VOCAB = 128


def tiny_llama(seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def calibration(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 32), generator=gen) for _ in range(n)]


def probe_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A GPTQ-quantized tiny model, its report, logits before/after, and its saved checkpoint."""
    model = tiny_llama()
    with torch.no_grad():
        fp_logits = model(probe_ids()).logits
    steps = []
    report = quantize_model(
        model,
        calibration(),
        bits=4,
        group_size=32,
        progress=lambda step, total, what: steps.append((step, total, what)),
    )
    with torch.no_grad():
        q_logits = model(probe_ids()).logits
    path = save_quantized(model, tmp_path_factory.mktemp("q") / "ckpt", report)
    return {"model": model, "report": report, "fp": fp_logits, "q": q_logits, "path": path, "steps": steps}


def test_every_decoder_linear_is_quantized_and_embeddings_are_not(quantized):
    model, report = quantized["model"], quantized["report"]
    names = qlinear.quantized_linear_names(model)
    assert len(names) == 14 and all(n.startswith("model.layers.") for n in names)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert [layer.name for layer in report.layers] == names
    assert all(layer.method == "gptq" and layer.calib_rows == 4 * 2 * 32 for layer in report.layers)
    assert quantized["steps"][-1] == (14, 14, names[-1]) and len(quantized["steps"]) == 14
    assert report.calib_tokens == 4 * 2 * 32
    # the quantized model is close to, but not equal to, the full-precision one
    diff = (quantized["q"] - quantized["fp"]).abs().max()
    assert 0 < float(diff) < 0.5 * float(quantized["fp"].abs().max())


def test_saved_checkpoint_is_a_standard_gptq_checkpoint(quantized):
    from safetensors import safe_open

    path = quantized["path"]
    config = json.loads((path / "config.json").read_text())
    qcfg = config["quantization_config"]
    assert qcfg["quant_method"] == "gptq" and qcfg["checkpoint_format"] == "gptq" and qcfg["format"] == "gptq"
    assert (qcfg["bits"], qcfg["group_size"], qcfg["desc_act"], qcfg["sym"]) == (4, 32, False, False)
    assert qcfg["pack_dtype"] == "int32" and qcfg["lm_head"] is False
    assert json.loads((path / "quantize_config.json").read_text()) == qcfg
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(str(path / "model.safetensors"), framework="pt") as reader:
        keys = set(reader.keys())
        qweight = reader.get_tensor("model.layers.0.self_attn.q_proj.qweight")
        qzeros = reader.get_tensor("model.layers.1.mlp.down_proj.qzeros")
        scales = reader.get_tensor("model.layers.1.mlp.down_proj.scales")
        g_idx = reader.get_tensor("model.layers.1.mlp.down_proj.g_idx")
    assert (qweight.dtype, tuple(qweight.shape)) == (torch.int32, (64 * 4 // 32, 64))
    assert (qzeros.dtype, tuple(qzeros.shape)) == (torch.int32, (128 // 32, 64 * 4 // 32))
    assert (scales.dtype, tuple(scales.shape)) == (torch.float16, (4, 64))
    assert (g_idx.dtype, g_idx.tolist()) == (torch.int32, [i // 32 for i in range(128)])
    assert "model.layers.0.self_attn.q_proj.weight" not in keys
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= keys
    assert not any(name.startswith(str(path) + ".tmp-") for name in map(str, path.parent.iterdir()))


def test_load_quantized_gives_the_in_memory_logits(quantized):
    loaded = load_quantized(quantized["path"], torch.float32)
    assert not loaded.training
    assert len(qlinear.quantized_linear_names(loaded)) == 14
    with torch.no_grad():
        logits = loaded(probe_ids()).logits
    torch.testing.assert_close(logits, quantized["q"], atol=1e-5, rtol=0)
    # and generate() runs through the quantized layers
    ids = probe_ids()
    out = loaded.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    ref = quantized["model"].generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    assert torch.equal(out, ref)


def test_quant_linear_keeps_fp16_scales_through_dtype_casts(quantized):
    loaded = load_quantized(quantized["path"], torch.float32)
    layer = loaded.model.layers[0].self_attn.q_proj
    before = layer.scales.clone()
    loaded.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, before)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = loaded(probe_ids()).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), quantized["q"], atol=0.05, rtol=0.05)


def test_dequant_matmul_is_pluggable(quantized):
    layer = quantized["model"].model.layers[0].mlp.up_proj
    x = torch.randn(3, 64)
    calls = []

    def fake_kernel(x, qweight, qzeros, scales, g_idx, bits):
        calls.append(bits)
        return qlinear.dequant_matmul_ref(x, qweight, qzeros, scales, g_idx, bits)

    set_dequant_matmul(fake_kernel)
    try:
        out = layer(x)
    finally:
        set_dequant_matmul(None)
    assert calls == [4]
    torch.testing.assert_close(out, x @ layer.dequantize().t())


def test_act_order_tied_embeddings_and_rtn_round_trip(tmp_path):
    model = tiny_llama(seed=3, tie=True)
    report = quantize_model(
        model, calibration(2), bits=4, group_size=16, desc_act=True, true_sequential=False
    )
    g_idx = model.model.layers[0].self_attn.q_proj.g_idx
    assert not bool((g_idx[1:] >= g_idx[:-1]).all())
    with torch.no_grad():
        expected = model(probe_ids()).logits
    path = save_quantized(model, tmp_path / "ckpt", report)
    assert json.loads((path / "config.json").read_text())["quantization_config"]["desc_act"] is True
    loaded = load_quantized(path, torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe_ids()).logits, expected, atol=1e-5, rtol=0)

    rtn_model = tiny_llama(seed=3)
    rtn_report = quantize_model(rtn_model, [], bits=8, group_size=-1, method="rtn")
    assert {layer.method for layer in rtn_report.layers} == {"rtn"}
    assert max(layer.rel_weight_error for layer in rtn_report.layers) < 0.01
    rtn_path = save_quantized(rtn_model, tmp_path / "rtn")
    with torch.no_grad():
        torch.testing.assert_close(
            load_quantized(rtn_path)(probe_ids()).logits, rtn_model(probe_ids()).logits, atol=1e-5, rtol=0
        )


def test_bad_requests_raise_clear_errors(quantized, tmp_path):
    model = tiny_llama()
    with pytest.raises(SuntoolError, match="bits=5 is not supported"):
        quantize_model(model, calibration(1), bits=5)
    with pytest.raises(
        SuntoolError, match=r"group_size=48 does not divide in_features=64 of model\.layers\.0"
    ):
        quantize_model(model, calibration(1), group_size=48)
    with pytest.raises(SuntoolError, match="needs calibration data"):
        quantize_model(model, [], group_size=32)
    with pytest.raises(SuntoolError, match="token ids outside"):
        quantize_model(model, [torch.tensor([[1, 2, VOCAB]])], group_size=32)
    with pytest.raises(SuntoolError, match="desc_act .* GPTQ only"):
        quantize_model(model, [], group_size=32, method="rtn", desc_act=True)
    assert not qlinear.quantized_linear_names(model)  # nothing was touched by the refused calls
    with pytest.raises(SuntoolError, match="already quantized"):
        quantize_model(quantized["model"], calibration(1), group_size=32)
    with pytest.raises(SuntoolError, match="already quantized"):
        quantize_model(load_quantized(quantized["path"]), calibration(1), group_size=32)
    with pytest.raises(SuntoolError, match="already exists"):
        save_quantized(quantized["model"], quantized["path"], quantized["report"])
    with pytest.raises(SuntoolError, match="holds no quantized layers"):
        save_quantized(tiny_llama(), tmp_path / "x", quantized["report"])
    with pytest.raises(CheckpointError, match="quant_method 'gptq'"):
        tiny_llama().save_pretrained(tmp_path / "plain")
        load_quantized(tmp_path / "plain")
