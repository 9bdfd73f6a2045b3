"""`quantize_model(..., lm_head=True)` / `suntool quantize --quantize-lm-head`: the output projection in 4 bits.

A tied lm_head is untied (the embedding keeps the full-precision weight); the checkpoint stays a
standard GPTQ checkpoint in gptqmodel's `lm_head: true` layout and loads back with the same logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from suntool.errors import SuntoolError
from suntool.quant.qlinear import QuantLinear, load_quantized
from suntool.quant.quantize_model import quantize_model, save_quantized, untie_lm_head
from tests.test_quant_model import calibration, probe_ids, tiny_llama


def test_untie_keeps_the_logits_and_frees_the_embedding():
    model = tiny_llama(seed=2, tie=True)
    with torch.no_grad():
        before = model(probe_ids()).logits
    assert untie_lm_head(model)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert model.config.tie_word_embeddings is False
    with torch.no_grad():
        assert torch.equal(model(probe_ids()).logits, before)
    assert not untie_lm_head(model)  # already untied: nothing to do


@pytest.mark.parametrize(("tie", "method"), [(True, "gptq"), (False, "gptq"), (True, "rtn")])
def test_lm_head_is_quantized_saved_in_the_gptq_layout_and_loads_back(tmp_path, tie, method):
    model = tiny_llama(seed=4, tie=tie)
    embedding = model.model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        full = model(probe_ids()).logits
    steps = []
    report = quantize_model(model, calibration() if method == "gptq" else [], bits=4, group_size=32, method=method,
                            lm_head=True, progress=lambda step, total, name: steps.append((step, total, name)))
    assert isinstance(model.lm_head, QuantLinear)
    assert report.layers[-1].name == "lm_head" and report.layers[-1].method == method
    assert steps[-1] == (15, 15, "lm_head")  # 14 decoder linears + the head
    assert torch.equal(model.model.embed_tokens.weight, embedding)  # the lookup table is untouched
    head_error = report.layers[-1].rel_weight_error
    assert 0 < head_error < 0.2
    with torch.no_grad():
        quantized = model(probe_ids()).logits
    assert not torch.equal(quantized, full)
    assert (quantized - full).abs().mean() < 0.5 * full.abs().mean()

    path = save_quantized(model, tmp_path / "ckpt", report)
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["lm_head"] is True
    assert config["quantization_config"]["quant_method"] == "gptq"
    assert config["tie_word_embeddings"] is False
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as handle:
        names = set(handle.keys())
    assert {f"lm_head.{s}" for s in ("qweight", "qzeros", "scales", "g_idx")} <= names
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    loaded = load_quantized(path, torch.float32)
    assert isinstance(loaded.lm_head, QuantLinear)
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe_ids()).logits, quantized, atol=1e-5, rtol=0)


def test_gptq_head_beats_round_to_nearest_on_the_calibration_distribution():
    """The head's Hessian is real: GPTQ's output error on calibration inputs is below RTN's."""
    results = {}
    for method in ("gptq", "rtn"):
        model = tiny_llama(seed=5, tie=True)
        reference = tiny_llama(seed=5, tie=True)
        quantize_model(model, calibration(8) if method == "gptq" else [], bits=4, group_size=32, method=method,
                       lm_head=True)
        ids = torch.cat(calibration(8))
        with torch.no_grad():
            hidden = reference.model.norm(reference.model(ids).last_hidden_state)
            results[method] = float((model.lm_head(hidden) - reference.lm_head(hidden)).pow(2).mean())
    assert results["gptq"] < results["rtn"]


def test_a_model_without_a_linear_head_is_refused_before_anything_changes():
    model = tiny_llama(seed=0)
    model.lm_head = torch.nn.Identity()
    model.config.tie_word_embeddings = False
    with pytest.raises(SuntoolError, match="no linear lm_head"):
        quantize_model(model, calibration(1), group_size=32, lm_head=True)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_the_command_quantizes_a_tied_head_and_the_bf16_half_decodes(capsys, tokenizer, tmp_path, arch):
    """`suntool quantize --quantize-lm-head` on a tied bf16 model: untied decode half, int4 head, generates."""
    from transformers import AutoModelForCausalLM

    from suntool.artifact import load_artifact
    from suntool.kernels.w4a16_cpu import available
    from suntool.manifest import read_manifest
    from suntool.split import SplitConfig, split
    from tests.test_cli import run_cli
    from tests.test_handoff import padded_batch
    from tests.tiny_models import VOCAB_SIZE, tiny_config

    config = tiny_config(arch)
    config.tie_word_embeddings = True
    torch.manual_seed(6)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    source = tmp_path / "tied"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    split(SplitConfig(model=str(source), out=tmp_path / "art", dtype="bfloat16"))
    code, stdout, _ = run_cli(capsys, "quantize", str(tmp_path / "art"), "--group-size", "32", "--calib-samples",
                              "8", "--calib-seq-len", "64", "--quantize-lm-head")
    assert code in (0, None), stdout
    assert "lm_head quantized" in stdout
    manifest = read_manifest(tmp_path / "art")
    assert manifest.decode.quantization["lm_head"] is True
    decode_config = json.loads((tmp_path / "art" / "decode" / "config.json").read_text())
    prefill_config = json.loads((tmp_path / "art" / "prefill" / "config.json").read_text())
    assert decode_config["tie_word_embeddings"] is False and prefill_config.get("tie_word_embeddings", True) is True
    loaded = load_artifact(tmp_path / "art", dtype="bfloat16")
    assert isinstance(loaded.decode_model.lm_head, QuantLinear)
    assert loaded.prefill_model.lm_head.weight is loaded.prefill_model.model.embed_tokens.weight  # untouched
    if available():  # the head runs on the int4 CPU op like the layers
        assert loaded.decode_model.lm_head.qweight.numel() == 0
    ids, mask = padded_batch()
    with torch.no_grad():
        logits = loaded.decode_model(input_ids=ids, attention_mask=mask).logits
        reference = loaded.prefill_model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape[-1] == VOCAB_SIZE and torch.isfinite(logits.float()).all()
    valid = mask.bool()
    assert (logits.argmax(-1) == reference.argmax(-1))[valid].float().mean() > 0.5
    code, stdout, _ = run_cli(capsys, "generate", str(tmp_path / "art"), "Paris is", "--max-new-tokens", "4")
    assert code == 0
