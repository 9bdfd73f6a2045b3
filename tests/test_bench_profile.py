"""`suntool bench --profile` on a tiny model: a grid the simulator reads, written atomically; bad flags refused."""

from __future__ import annotations

import json

import pytest

from suntool.bench.profile import ProfileConfig, measure_profile
from suntool.errors import SuntoolError
from suntool.simulate.profile import load_profile
from suntool.split import SplitConfig, split


@pytest.fixture(scope="module")
def artifact(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "task"
    split(SplitConfig(model=str(llama_dir), out=out))
    return out


def test_profile_of_the_local_engine_is_complete_and_readable(artifact, tmp_path):
    out = tmp_path / "profile.json"
    config = ProfileConfig(artifacts=(str(artifact),), out=out, batch_sizes=(1, 3), contexts=(8, 24),
                           prefill_tokens=(8, 32), prefill_batches=((2, 16),), decode_steps=8, repeats=1)
    said = []
    data = measure_profile(config, said.append)
    assert json.loads(out.read_text()) == data
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind
    assert data["decode"]["batch_sizes"] == [1, 3] and data["decode"]["contexts"] == [8, 24]
    assert all(len(row) == 2 and all(s > 0 for s in row) for row in data["decode"]["step_seconds"])
    assert [(p["batch"], p["prompt_tokens"]) for p in data["prefill"]["points"]] == [(1, 8), (1, 32), (2, 16)]
    assert data["engine"]["max_batch"] == 64 and data["engine"]["kv_capacity_tokens"] > 0
    assert data["host"]["cores"] >= 1 and data["host"]["thread_speedup"] >= 1.0
    pair = data["host"]["pair_speed"]
    assert pair is None if data["host"]["cores"] == 1 else 0 < pair <= 1.5
    profile = load_profile(out)
    assert profile.decode_step(2, 16) > 0 and profile.prefill(32) > 0
    assert any("decode batch" in line for line in said)


def test_profile_flags_are_checked(artifact, tmp_path):
    with pytest.raises(SuntoolError, match="--profile-batches"):
        ProfileConfig(artifacts=(str(artifact),), out=tmp_path / "p.json", batch_sizes=(4, 2)).validate()
    with pytest.raises(SuntoolError, match="--local"):
        ProfileConfig(artifacts=(), out=tmp_path / "p.json").validate()


def test_cli_profile_needs_local(capsys):
    from suntool.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1:1", "--profile", "p.json"])
    assert exit_info.value.code == 2
    assert "--local" in capsys.readouterr().err
