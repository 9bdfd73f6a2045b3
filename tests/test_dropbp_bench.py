"""benchmarks/dropbp.py on a tiny model: every rate and LoRA setting measured against one plain run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_train_support import one_torch_thread

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dropbp.py"


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def _bench():
    spec = importlib.util.spec_from_file_location("dropbp_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rates_and_lora_are_measured_against_one_plain_run(llama_dir, tmp_path, capsys):
    out = tmp_path / "dropbp.json"
    bench = _bench()
    assert bench.main([
        "--model", str(llama_dir), "--rate", "0.5", "--rate", "0.875", "--lora", "0", "--lora", "4",
        "--warmup", "0", "--pairs", "2", "--batch-size", "2", "--prompt-len", "8", "--completion-len", "8",
        "--device", "cpu", "--out", str(out),
    ]) == 0
    result = json.loads(out.read_text())
    assert [run["lora"] for run in result["runs"]] == [0, 4]
    full, lora = result["runs"]
    assert lora["trainable_parameters"] < full["trainable_parameters"]
    for run in result["runs"]:
        assert run["plain"]["timings"]["steps"] == 2
        assert set(run["rates"]) == {"0.5", "0.875"}
        plain_saved = run["plain"]["memory_bytes"]["saved_activations"]
        for p, entry in run["rates"].items():
            assert entry["timings"]["steps"] == 2
            assert entry["ratio_step"] > 0
            assert entry["expected_kept_fraction"] <= 1 - float(p) + 1e-9  # the FLOPs budget holds
            assert abs(entry["realised_kept_fraction_2000_draws"] - entry["expected_kept_fraction"]) < 0.05
            assert all(0 <= r <= 0.9 for r in entry["rates"])
        high = run["rates"]["0.875"]
        assert high["memory_bytes"]["saved_activations"] < plain_saved  # dropped branches hold nothing
        assert high["ratio_peak_estimate"] < 1
    text = capsys.readouterr().out
    assert "DropBP 0.875" in text and "LoRA r=4" in text
