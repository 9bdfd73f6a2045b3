"""DDP: `torchrun` and `accelerate launch` with 2 processes (gloo, CPU) match one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from suntool.manifest import read_manifest
from suntool.train import finetune
from tests.test_train_support import (
    arith_records,
    make_artifact,
    one_torch_thread,
    state_dict_of,
    subprocess_env,
    tiny_config,
    write_jsonl,
)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


LAUNCHERS = {
    "torchrun": ["torchrun", "--standalone", "--nproc-per-node", "2", "-m"],
    "accelerate": ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "-m"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_one_process_with_the_same_global_batch(llama_dir, tmp_path, launcher):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    data = write_jsonl(tmp_path / "train.jsonl", arith_records(20))
    ddp_out = tmp_path / "ddp"
    program, *arguments = LAUNCHERS[launcher]
    command = [
        str(Path(sys.executable).parent / program), *arguments, "suntool", "finetune", str(source),
        "--data", str(data), "-o", str(ddp_out), "--method", "sun", "--steps", "6", "--batch-size", "3",
        "--grad-accum", "1", "--lr", "0.003", "--warmup-steps", "1", "--device", "cpu", "--eval-data", str(data),
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = read_manifest(ddp_out).training
    assert ddp["world_size"] == 2 and ddp["global_batch"] == 6
    assert not Path(f"{ddp_out}.train").exists()

    # One process, the same 6 examples per step as 2 micro-batches of 3 (the same micro-batches as the ranks).
    single = finetune(tiny_config(source, data, tmp_path / "single", method="sun", steps=6, batch_size=3,
                                  grad_accum=2, lr=3e-3, warmup_steps=1, eval_data=str(data)))
    assert single.summary.world_size == 1 and single.summary.global_batch == 6
    assert ddp["final_train_loss"] == pytest.approx(single.summary.final_loss, rel=1e-4)
    assert ddp["final_eval_loss"] == pytest.approx(single.summary.final_eval_loss, rel=1e-4)
    assert ddp["initial_eval_loss"] == pytest.approx(single.summary.initial_eval_loss, rel=1e-5)
    assert ddp["final_eval_loss"] < ddp["initial_eval_loss"]
    a, b = state_dict_of(ddp_out / "prefill"), state_dict_of(tmp_path / "single" / "prefill")
    for name in a:
        assert a[name].allclose(b[name], rtol=1e-3, atol=1e-5), name
