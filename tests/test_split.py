"""`suntool split`: artifact layout, loadable halves, shared store, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from suntool.artifact import load_artifact, open_artifact
from suntool.errors import SuntoolError
from suntool.fingerprint import fingerprint_checkpoint
from suntool.manifest import FORMAT_VERSION, Manifest, read_manifest
from suntool.split import SplitConfig, split
from suntool.store import disk_usage, store_root


def test_sun_artifact_layout_and_halves_load(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "task-a"
    manifest = split(SplitConfig(model=str(llama_dir), out=out, mode="sun"))
    assert sorted(p.name for p in out.iterdir()) == ["decode", "prefill", "split.yaml", "suntool.json"]
    assert manifest == read_manifest(out)
    assert manifest.format_version == FORMAT_VERSION and manifest.mode == "sun"
    assert manifest.decode.role == "shared" and manifest.prefill.role == "task"
    assert manifest.architecture == "LlamaForCausalLM" and manifest.dtype == "float32"
    for half in ("prefill", "decode"):
        model = AutoModelForCausalLM.from_pretrained(out / half)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert AutoTokenizer.from_pretrained(out / half)("hello")["input_ids"]
        assert fingerprint_checkpoint(out / half) == manifest.half(half).sha256
    stored = store_root() / manifest.decode.sha256.removeprefix("sha256:")
    assert os.path.samefile(stored / "model.safetensors", out / "decode" / "model.safetensors")
    assert not os.path.samefile(stored / "model.safetensors", out / "prefill" / "model.safetensors")


def test_prefillshare_shares_the_prefill_half(llama_dir, tmp_path):
    manifest = split(SplitConfig(model=str(llama_dir), out=tmp_path / "ps", mode="prefillshare"))
    assert manifest.prefill.role == "shared" and manifest.decode.role == "task"
    loaded = load_artifact(tmp_path / "ps")
    assert loaded.prefill_model is loaded.decode_model  # same weights until trained: loaded once


def test_dtype_conversion(llama_dir, tmp_path):
    manifest = split(SplitConfig(model=str(llama_dir), out=tmp_path / "bf16", dtype="bfloat16"))
    assert manifest.dtype == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "prefill" / "config.json").read_text())["dtype"] == "bfloat16"


def test_ten_artifacts_share_one_copy_of_the_shared_half(llama_dir, tmp_path):
    outs = [tmp_path / f"task-{i}" for i in range(10)]
    manifests = [split(SplitConfig(model=str(llama_dir), out=out)) for out in outs]
    assert len({m.decode.sha256 for m in manifests}) == 1
    one_half = disk_usage([outs[0] / "decode"])
    decode_total = disk_usage([out / "decode" for out in outs] + [store_root()])
    assert decode_total == one_half  # hardlinks: ten artifacts + the store hold one copy
    prefill_total = disk_usage([out / "prefill" for out in outs])
    assert prefill_total == pytest.approx(10 * one_half, rel=0.01)  # task halves are per-task copies


def test_reference_when_hardlinks_are_impossible(llama_dir, tmp_path, monkeypatch):
    import suntool.store as store

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(store.os, "link", no_links)
    manifest = split(SplitConfig(model=str(llama_dir), out=tmp_path / "ref"))
    assert Path(manifest.decode.path).is_absolute() and not (tmp_path / "ref" / "decode").exists()
    ref = open_artifact(tmp_path / "ref")
    assert ref.decode_dir == Path(manifest.decode.path)


def test_existing_output_needs_force(llama_dir, tmp_path):
    out = tmp_path / "art"
    split(SplitConfig(model=str(llama_dir), out=out))
    with pytest.raises(SuntoolError, match="already exists.*--force"):
        split(SplitConfig(model=str(llama_dir), out=out))
    split(SplitConfig(model=str(llama_dir), out=out, mode="prefillshare", force=True))
    assert read_manifest(out).mode == "prefillshare"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp or backup dirs left over


def test_interrupted_split_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    import suntool.split as split_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(split_module, "write_config_yaml", crash)
    with pytest.raises(KeyboardInterrupt):
        split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_and_validation(llama_dir, tmp_path):
    manifest = split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    data = manifest.to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(data))) == manifest
    for field, value, message in [
        ("format_version", 99, "format_version 99 is not supported"),
        ("mode", "both", "mode"),
        ("prefill", {"path": "prefill", "role": "shared", "sha256": manifest.prefill.sha256}, "prefill.role"),
        ("decode", {"path": "decode", "role": "shared", "sha256": "md5:1"}, "decode.sha256"),
    ]:
        broken = dict(data, **{field: value})
        with pytest.raises(SuntoolError, match=message):
            Manifest.from_dict(broken, source="x/suntool.json")
    missing = {k: v for k, v in data.items() if k != "architecture"}
    with pytest.raises(SuntoolError, match="missing field 'architecture'"):
        Manifest.from_dict(missing)


def test_same_tensors_with_another_config_is_another_shared_half(llama_dir, tmp_path):
    """The store is keyed by tensors *and* config: a longer context is not the same half."""
    import shutil

    other = tmp_path / "long-context"
    shutil.copytree(llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["max_position_embeddings"] *= 2
    (other / "config.json").write_text(json.dumps(config))
    first = split(SplitConfig(model=str(llama_dir), out=tmp_path / "a"))
    second = split(SplitConfig(model=str(other), out=tmp_path / "b"))
    assert first.decode.sha256 != second.decode.sha256
    loaded = json.loads((tmp_path / "b" / "decode" / "config.json").read_text())
    assert loaded["max_position_embeddings"] == config["max_position_embeddings"]
