"""benchmarks/qsun.py on a tiny model: one full-precision half against two 4-bit ones (with and without lm_head)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "qsun.py"


def test_quantized_heads_are_measured_in_one_run(llama_dir, tmp_path, capsys):
    from suntool.quantize import QuantizeArtifactConfig, quantize_artifact
    from suntool.split import SplitConfig, split

    split(SplitConfig(model=str(llama_dir), out=tmp_path / "bf16", dtype="bfloat16"))
    for name, head in (("q", False), ("q-head", True)):
        quantize_artifact(QuantizeArtifactConfig(artifact=tmp_path / "bf16", out=tmp_path / name, group_size=32,
                                                 method="rtn", quantize_lm_head=head))
    spec = importlib.util.spec_from_file_location("qsun_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    assert bench.main([str(tmp_path / "bf16"), str(tmp_path / "q"), str(tmp_path / "q-head"), "--texts", "6",
                       "--repeats", "1", "--new-tokens", "2", "--batch", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    plain, head = result["variants"][str(tmp_path / "q")], result["variants"][str(tmp_path / "q-head")]
    assert result["disk_ratio"] == plain["disk_ratio"]  # the first variant is also at the top level
    full_head = result["full_lm_head_bytes"]
    assert full_head == 384 * 64 * 2  # the tiny llama's untied bf16 head
    assert plain["as_decoding_lm_head_bytes"] == full_head  # left in bf16
    assert head["as_decoding_lm_head_bytes"] < 0.5 * full_head  # 4-bit codes + group scales/zeros
    assert head["disk_bytes_quantized"] < plain["disk_bytes_quantized"]
    assert head["memory_bytes_layers_as_decoding"] == plain["memory_bytes_layers_as_decoding"]  # layers alike
    for variant in (plain, head):
        assert variant["decode_time_ratio"] > 0 and variant["perplexity_quantized"] > 1
    assert "-- " + str(tmp_path / "q-head") in capsys.readouterr().out
