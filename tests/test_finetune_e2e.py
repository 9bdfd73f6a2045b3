"""`suntool finetune` end to end on the tiny model: each method, LoRA, the artifact it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from suntool.errors import SuntoolError
from suntool.fingerprint import fingerprint_checkpoint
from suntool.manifest import read_manifest
from suntool.train import finetune
from tests.test_train_support import (
    arith_records,
    make_artifact,
    one_torch_thread,
    state_dict_of,
    tiny_config,
    write_jsonl,
)

CASES = [("sun", 0), ("prefillshare", 0), ("full", 0), ("sun", 4), ("prefillshare", 4), ("full", 4)]


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", arith_records(32))


def _generate(out: Path) -> str:
    from suntool.artifact import load_artifact
    from suntool.generation import generate_texts
    from suntool.handoff import SamplingConfig

    loaded = load_artifact(out)
    (result,) = generate_texts(loaded, ["Question: what is 2 plus 3? Answer:"], SamplingConfig(max_new_tokens=4))
    assert result.tokens
    return result.text


@pytest.mark.parametrize(("method", "lora"), CASES)
def test_finetune_writes_a_valid_artifact_and_leaves_the_shared_half_alone(method, lora, llama_dir, data, tmp_path):
    mode = "prefillshare" if method == "prefillshare" else "sun"
    source = make_artifact(llama_dir, tmp_path / "art", mode)
    source_manifest = read_manifest(source)
    shared_name = source_manifest.shared_half
    shared = source_manifest.half(shared_name)
    shared_bytes = (source / shared_name / "model.safetensors").read_bytes()
    out = tmp_path / "tuned"
    config = tiny_config(source, data, out, method=method, lora=lora, lr=1e-2 if lora else 3e-3, eval_data=str(data))
    result = finetune(config)

    summary = result.summary
    assert summary.final_eval_loss < 0.8 * summary.initial_eval_loss  # it learned something
    manifest = read_manifest(out)
    assert manifest == result.manifest
    assert not config.work_dir.exists()  # checkpoints/metrics of the run in progress are gone
    assert (out / "metrics.jsonl").is_file() and (out / "finetune.yaml").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == list(range(1, 13))
    assert yaml.safe_load((out / "finetune.yaml").read_text())["method"] == method
    assert manifest.training["method"] == method and manifest.training["steps"] == 12
    assert manifest.training["final_eval_loss"] == pytest.approx(summary.final_eval_loss)
    text = _generate(out)
    assert isinstance(text, str)

    # The shared half is bit-for-bit the source's: same file (hardlinked from the store), same fingerprint.
    assert (source / shared_name / "model.safetensors").read_bytes() == shared_bytes
    assert fingerprint_checkpoint(source / shared_name) == shared.sha256
    if method == "full":
        assert manifest.mode == "monolithic" and manifest.prefill == manifest.decode
        task_name, task = "model", manifest.prefill
        assert task.trained_against is None
        assert manifest.training["started_from"]["sha256"] == shared.sha256
    else:
        assert manifest.mode == mode
        assert manifest.half(shared_name) == shared.__class__(**{**shared.__dict__, "path": shared_name})
        assert os.path.samefile(out / shared_name / "model.safetensors", source / shared_name / "model.safetensors")
        task_name = "prefill" if method == "sun" else "decode"
        task = manifest.half(task_name)
        assert task.role == "task" and task.trained_against == shared.sha256
    assert fingerprint_checkpoint(out / task_name) == task.sha256

    base = state_dict_of(source / (shared_name if method == "full" else task_name))
    trained = state_dict_of(out / task_name)
    if lora:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        adapter_dir = out / task.adapter
        assert task.adapter == f"{task_name}-adapter"
        assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
        assert all(base[name].equal(trained[name]) for name in base)  # the task half holds the untouched base
        assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == lora
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / task_name), adapter_dir)
        merged = model.merge_and_unload().state_dict()
        assert any(not merged[name].equal(base[name]) for name in base)
    else:
        assert task.adapter is None
        changed = [name for name in base if not base[name].equal(trained[name])]
        assert changed  # the task half was trained
        if method == "sun":  # SUN never reaches the prefill half's LM head
            assert "lm_head.weight" not in changed and "model.layers.0.self_attn.k_proj.weight" in changed


def test_dropbp_bf16_and_checkpointing_run_and_are_recorded(llama_dir, data, tmp_path):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    out = tmp_path / "tuned"
    config = tiny_config(source, data, out, method="sun", dropbp=0.5, bf16=True, gradient_checkpointing=True,
                         steps=20, eval_data=str(data))
    result = finetune(config)
    dropbp = result.summary.dropbp
    assert dropbp["calibrated"] and dropbp["calibrated_at"] == 2
    assert dropbp["expected_kept_fraction"] <= 0.5 + 1e-9
    assert 0 < dropbp["realised_kept_fraction"] < 1
    assert result.manifest.training["dropbp_rates"] == dropbp["rates"]
    assert result.manifest.training["precision"] == "bf16"
    assert result.summary.final_eval_loss < result.summary.initial_eval_loss


def test_output_and_unfinished_runs_are_protected(llama_dir, data, tmp_path):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    out = tmp_path / "tuned"
    out.mkdir()
    with pytest.raises(SuntoolError, match="already exists.*--force"):
        finetune(tiny_config(source, data, out, steps=2))
    finetune(tiny_config(source, data, out, steps=2, force=True))
    assert read_manifest(out).training["steps"] == 2
    with pytest.raises(SuntoolError, match="already exists \\(that run finished; nothing to resume\\)"):
        finetune(tiny_config(source, data, out, steps=2, resume=True))
    work = tiny_config(source, data, tmp_path / "other").work_dir
    (work / "step-000004").mkdir(parents=True)
    with pytest.raises(SuntoolError, match="unfinished run.*--resume.*--force"):
        finetune(tiny_config(source, data, tmp_path / "other", steps=2))


def test_the_command_line(llama_dir, data, tmp_path, capsys):
    from suntool.cli import main

    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    settings = tmp_path / "run.yaml"
    settings.write_text(yaml.safe_dump({"steps": 50, "lr": 0.003, "batch_size": 4, "method": "sun"}))
    out = tmp_path / "tuned"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(source), "--data", str(data), "-o", str(out), "--config", str(settings), "--steps", "3",
              "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    saved = yaml.safe_load((out / "finetune.yaml").read_text())
    assert saved["steps"] == 3 and saved["batch_size"] == 4 and saved["lr"] == 0.003  # flag beats YAML
    assert f"wrote {out}" in capsys.readouterr().out

    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "x"}'])
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(source), "--data", str(bad), "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert f"{bad}:1: missing field 'completion'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", str(source), "--data", str(data), "-o", str(tmp_path / "y"), "--attention", "sliding"])
    assert exit_info.value.code == 2
    assert "attention (--attention) must be one of standard, affine" in capsys.readouterr().err


def test_sun_trains_against_a_quantized_shared_decode_half(llama_dir, data, tmp_path):
    """QSUN: the prefill half learns through a 4-bit decode half, which stays exactly as quantized."""
    from suntool.quantize import QuantizeArtifactConfig, quantize_artifact

    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    quantized = tmp_path / "qsun"
    quantize_artifact(QuantizeArtifactConfig(artifact=source, out=quantized, bits=4, method="rtn", group_size=32))
    shared = read_manifest(quantized).decode
    assert shared.quantization
    out = tmp_path / "tuned"
    result = finetune(tiny_config(quantized, data, out, method="sun", eval_data=str(data)))
    assert result.summary.final_eval_loss < 0.8 * result.summary.initial_eval_loss
    manifest = read_manifest(out)
    assert manifest.decode == shared.__class__(**{**shared.__dict__, "path": "decode"})
    assert manifest.prefill.trained_against == shared.sha256
    assert fingerprint_checkpoint(out / "decode") == shared.sha256
    _generate(out)
