"""The command line: instant help, every subcommand listed, user errors as one red line + exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suntool.cli import SUBCOMMANDS, main
from suntool.split import SplitConfig, split
from tests.tiny_models import build_model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_user_error(capsys, argv, *needles):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    assert "\nerror:" in "\n" + err, err
    message = err[err.rfind("error:") :]  # one line, or a listing of bad records (data files)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_help_is_instant_and_lists_every_subcommand():
    code = (
        "import sys, time; t = time.process_time(); from suntool.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import at help time'\n"
        "print('ELAPSED', time.process_time() - t)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert f" {name} " in result.stdout
    # CPU seconds, not wall time: a loaded CI machine must not fail it, a heavy import still does
    assert float(result.stdout.split("ELAPSED")[1]) < 1.5
    module = subprocess.run([sys.executable, "-m", "suntool", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "split" in module.stdout


def test_split_info_generate_end_to_end(capsys, llama_dir, tmp_path):
    out = tmp_path / "art"
    code, stdout, _ = run_cli(capsys, "split", str(llama_dir), "-o", str(out))
    assert code == 0 and "mode=sun" in stdout
    code, stdout, _ = run_cli(capsys, "info", str(out), "--verify")
    assert code == 0 and stdout.count("ok") >= 2 and "shared" in stdout
    code, stdout, _ = run_cli(capsys, "generate", str(out), "Paris is", "--max-new-tokens", "5")
    assert code == 0 and stdout.strip()


def test_bad_input_path_missing(capsys, tmp_path):
    assert_user_error(capsys, ["split", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], "does not exist")
    assert_user_error(capsys, ["info", str(tmp_path / "nope")], "does not exist")
    assert_user_error(capsys, ["generate", str(tmp_path / "nope"), "hi"], "does not exist")
    assert not (tmp_path / "o").exists()


def test_bad_input_directory_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(capsys, ["split", str(tmp_path / "empty"), "-o", str(tmp_path / "o")], "config.json")
    assert_user_error(capsys, ["info", str(tmp_path / "empty")], "suntool.json")
    assert not (tmp_path / "o").exists()


def test_bad_input_unsupported_architecture(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    last = assert_user_error(capsys, ["split", str(tmp_path / "gpt2"), "-o", str(tmp_path / "o")], "'gpt2'")
    for supported in ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"):
        assert supported in last


def test_bad_input_truncated_safetensors(capsys, llama_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_user_error(capsys, ["split", str(broken), "-o", str(tmp_path / "o")], "model.safetensors", "truncated")
    weights.write_bytes(b"\x00" * 4)
    assert_user_error(capsys, ["split", str(broken), "-o", str(tmp_path / "o")], "truncated")
    assert not (tmp_path / "o").exists()


def test_bad_input_output_exists(capsys, llama_dir, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    assert_user_error(capsys, ["split", str(llama_dir), "-o", str(tmp_path / "o")], "already exists", "--force")
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_bad_input_unknown_format_version(capsys, llama_dir, tmp_path):
    out = tmp_path / "art"
    split(SplitConfig(model=str(llama_dir), out=out))
    manifest = json.loads((out / "suntool.json").read_text())
    manifest["format_version"] = 7
    (out / "suntool.json").write_text(json.dumps(manifest))
    assert_user_error(capsys, ["info", str(out)], "suntool.json", "format_version 7")
    assert_user_error(capsys, ["generate", str(out), "hi"], "format_version 7")


def test_bad_input_modified_shared_half_is_refused(capsys, llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "art"
    split(SplitConfig(model=str(llama_dir), out=out))
    weights = out / "decode" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    weights.unlink()  # break the hardlink first, as an editor or a careless script would
    save_file(tensors, weights, metadata={"format": "pt"})
    assert_user_error(capsys, ["generate", str(out), "hi"], "no longer matches its fingerprint")
    code, stdout, _ = run_cli(capsys, "info", str(out), "--verify")
    assert code == 1 and "MISMATCH" in stdout


def _swap_decode_half(out: Path, other: Path) -> None:
    from suntool.fingerprint import fingerprint_checkpoint

    manifest = json.loads((out / "suntool.json").read_text())
    manifest["decode"].update(path=str(other), sha256=fingerprint_checkpoint(other))
    (out / "suntool.json").write_text(json.dumps(manifest))


def test_bad_input_halves_of_different_architectures_or_vocabularies(capsys, tiny_checkpoints, tokenizer, tmp_path):
    out = tmp_path / "art"
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=out))
    _swap_decode_half(out, tiny_checkpoints["qwen2"])
    assert_user_error(capsys, ["generate", str(out), "hi"], "decode half is a 'qwen2' model")

    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=out, force=True))
    model = build_model("llama")
    model.resize_token_embeddings(512)
    model.config.vocab_size = 512
    model.save_pretrained(tmp_path / "big-vocab")
    tokenizer.save_pretrained(tmp_path / "big-vocab")
    _swap_decode_half(out, tmp_path / "big-vocab")
    assert_user_error(capsys, ["generate", str(out), "hi"], "vocab_size: prefill=384 decode=512")


def test_errors_exit_2_without_traceback_in_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "suntool", "info", str(tmp_path / "missing")],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_info_summarises_the_training_block():
    from suntool.info import training_lines

    lines = training_lines({
        "method": "sun", "lora": 16, "dropbp": None, "attention": "affine", "steps": 50, "global_batch": 8,
        "world_size": 1, "lr": 0.002, "precision": "fp32", "final_train_loss": 0.01081, "initial_eval_loss": 1.38770,
        "final_eval_loss": 0.01595, "tokens": 27724, "seconds": 115.1, "data": "train.jsonl",
        "data_sha256": "sha256:76fdb153b47f4ff7116f5eb4d3fc", "train_examples": 400,
        "started_from": {"artifact": "runs/base"}, "some_future_key": [1, 2],
    })
    assert lines == [
        "  method=sun  lora=16  steps=50  batch=8  lr=0.002  precision=fp32  attention=affine",
        "  train loss 0.0108 · eval loss 1.3877 → 0.0159 · 27,724 tokens in 115 s",
        "  data train.jsonl (sha256:76fdb153b47f…), 400 examples",
        "  started from runs/base",
    ]
    assert training_lines({"method": "full"}) == ["  method=full"]
