"""`suntool quantize`: QSUN's 4-bit shared decode half in GPTQ format, pairing rules, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from suntool.artifact import load_artifact
from suntool.fingerprint import fingerprint_checkpoint
from suntool.manifest import read_manifest
from suntool.split import SplitConfig, split
from tests.test_cli import assert_user_error, run_cli
from tests.test_handoff import padded_batch


@pytest.fixture()
def sun_artifact(llama_dir, tmp_path):
    split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    return tmp_path / "art"


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_quantize_writes_a_gptq_decode_half_and_generates(capsys, sun_artifact, method):
    before = read_manifest(sun_artifact)
    code, stdout, _ = run_cli(
        capsys, "quantize", str(sun_artifact), "--group-size", "32", "--method", method, "--calib-samples", "8",
        "--calib-seq-len", "64",
    )
    assert code in (0, None), stdout
    after = read_manifest(sun_artifact)
    assert after.prefill == before.prefill  # the task half is untouched
    assert after.decode.sha256 != before.decode.sha256 and after.decode.role == "shared"
    assert after.decode.sha256 == fingerprint_checkpoint(sun_artifact / "decode")
    assert after.decode.quantization["quant_method"] == "gptq" and after.decode.quantization["bits"] == 4
    config = json.loads((sun_artifact / "decode" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"
    assert config["quantization_config"]["checkpoint_format"] == "gptq"
    from safetensors import safe_open

    with safe_open(sun_artifact / "decode" / "model.safetensors", "pt") as handle:
        names = set(handle.keys())
        assert handle.get_tensor("model.layers.0.self_attn.q_proj.qweight").dtype == torch.int32
    for suffix in ("qweight", "qzeros", "scales", "g_idx"):
        assert f"model.layers.1.mlp.down_proj.{suffix}" in names
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names  # full precision

    loaded = load_artifact(sun_artifact)
    ids, mask = padded_batch()
    with torch.no_grad():
        quantized = loaded.decode_model(input_ids=ids, attention_mask=mask).logits
        full = loaded.prefill_model(input_ids=ids, attention_mask=mask).logits
    assert not torch.equal(quantized, full)
    # close, not equal: 4-bit weights of a random N(0, 0.2) model move its logits by ~30%
    assert (quantized - full).abs().mean() < 0.5 * full.abs().mean()
    q_proj = loaded.decode_model.model.layers[0].self_attn.q_proj
    dense = loaded.prefill_model.model.layers[0].self_attn.q_proj.weight
    assert ((q_proj.dequantize().float() - dense).norm() / dense.norm()) < 0.15
    code, stdout, _ = run_cli(capsys, "generate", str(sun_artifact), "Paris is", "--max-new-tokens", "4")
    assert code == 0 and stdout.strip()
    assert_user_error(capsys, ["quantize", str(sun_artifact), "--group-size", "32"], "already quantized")


def test_prefill_trained_against_full_precision_is_refused_with_the_quantized_half(capsys, sun_artifact):
    manifest = json.loads((sun_artifact / "suntool.json").read_text())
    manifest["prefill"]["trained_against"] = manifest["decode"]["sha256"]  # as `finetune --method sun` records
    (sun_artifact / "suntool.json").write_text(json.dumps(manifest))
    run_cli(capsys, "quantize", str(sun_artifact), "--group-size", "32", "--method", "rtn")
    assert_user_error(capsys, ["generate", str(sun_artifact), "hi"], "trained against", "--allow-mismatch")
    code, stdout, _ = run_cli(capsys, "generate", str(sun_artifact), "hi", "--max-new-tokens", "3", "--allow-mismatch")
    assert code == 0


def test_quantize_into_a_new_artifact_leaves_the_source_alone(capsys, sun_artifact, tmp_path):
    before = (sun_artifact / "suntool.json").read_text()
    run_cli(capsys, "quantize", str(sun_artifact), "-o", str(tmp_path / "q"), "--group-size", "32", "--method", "rtn")
    assert (sun_artifact / "suntool.json").read_text() == before
    assert read_manifest(tmp_path / "q").decode.quantization is not None

    from suntool.fingerprint import checkpoint_stats
    from suntool.info import describe

    original, quantized = describe(sun_artifact).halves[1], describe(tmp_path / "q").halves[1]
    assert quantized.parameters == original.parameters  # packed qweights count as the weights they hold
    assert quantized.bytes < original.bytes
    assert checkpoint_stats(tmp_path / "q" / "prefill") == checkpoint_stats(sun_artifact / "prefill")


def test_quantize_bad_input(capsys, sun_artifact, llama_dir, tmp_path):
    art = str(sun_artifact)
    assert_user_error(capsys, ["quantize", art, "--bits", "5"], "bits")
    assert_user_error(capsys, ["quantize", art, "--group-size", "48"], "48", "64")
    split(SplitConfig(model=str(llama_dir), out=tmp_path / "ps", mode="prefillshare"))
    assert_user_error(capsys, ["quantize", str(tmp_path / "ps"), "--group-size", "32"], "task half", "--force")
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\nnot json\n')
    assert_user_error(capsys, ["quantize", art, "--group-size", "32", "--calib", str(bad)], "calib.jsonl", ":2")
    small = tmp_path / "small.jsonl"
    small.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n')
    assert_user_error(capsys, ["quantize", art, "--group-size", "32", "--calib", str(small)], "at least 4 samples")
    assert read_manifest(sun_artifact).decode.quantization is None  # nothing half-written


def test_unquantized_tensors_keep_the_artifact_dtype(capsys, llama_dir, tmp_path):
    from safetensors import safe_open

    split(SplitConfig(model=str(llama_dir), out=tmp_path / "bf16", dtype="bfloat16"))
    run_cli(capsys, "quantize", str(tmp_path / "bf16"), "--group-size", "32", "--method", "rtn")
    with safe_open(tmp_path / "bf16" / "decode" / "model.safetensors", "pt") as handle:
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert handle.get_tensor("model.norm.weight").dtype == torch.bfloat16
        assert handle.get_tensor("model.layers.0.self_attn.q_proj.scales").dtype == torch.float16
    full = sum(f.stat().st_size for f in (tmp_path / "bf16" / "prefill").glob("*.safetensors"))
    quant = sum(f.stat().st_size for f in (tmp_path / "bf16" / "decode").glob("*.safetensors"))
    assert quant < full


def test_default_group_size_fits_the_model(capsys, sun_artifact):
    """hidden 64 / intermediate 96: 128 and 64 do not divide 96, so the default picks 32."""
    run_cli(capsys, "quantize", str(sun_artifact), "--method", "rtn")
    assert read_manifest(sun_artifact).decode.quantization["group_size"] == 32


def test_bf16_quantized_half_loads_holding_only_the_cpu_int4_packs(capsys, llama_dir, tmp_path):
    from suntool.kernels.w4a16_cpu import available
    from suntool.quant.qlinear import QuantLinear

    if not available():
        pytest.skip("this torch has no int4 CPU ops")
    split(SplitConfig(model=str(llama_dir), out=tmp_path / "bf16", dtype="bfloat16"))
    run_cli(capsys, "quantize", str(tmp_path / "bf16"), "--group-size", "32", "--method", "rtn")
    packed = load_artifact(tmp_path / "bf16", dtype="bfloat16")
    plain = load_artifact(tmp_path / "bf16", dtype="bfloat16", kernels=False)
    linears = [m for m in packed.decode_model.modules() if isinstance(m, QuantLinear)]
    assert linears and all(m.qweight.numel() == 0 for m in linears)  # the int4 pack replaced it
    assert all(m.qweight.numel() > 0 for m in plain.decode_model.modules() if isinstance(m, QuantLinear))
    ids, mask = padded_batch()
    with torch.no_grad():
        fast = packed.decode_model(input_ids=ids, attention_mask=mask).logits.float()
        ref = plain.decode_model(input_ids=ids, attention_mask=mask).logits.float()
    valid = mask.bool()
    # bf16 rounding of scales/zeros and of the op's output: a few bf16 ulps of the logits
    assert (fast - ref)[valid].abs().max() < 0.05 * ref[valid].abs().max()
    assert (fast.argmax(-1) == ref.argmax(-1))[valid].float().mean() > 0.9
    code, stdout, _ = run_cli(capsys, "generate", str(tmp_path / "bf16"), "Paris is", "--max-new-tokens", "4")
    assert code == 0 and stdout.strip()
