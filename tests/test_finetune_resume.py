"""--resume: a run killed with SIGKILL mid-way continues to the same result as an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from suntool.train import finetune
from suntool.train.loop import latest_checkpoint
from tests.test_train_support import (
    arith_records,
    make_artifact,
    one_torch_thread,
    state_dict_of,
    subprocess_env,
    tiny_config,
    write_jsonl,
)

STEPS, SAVE_EVERY = 80, 5


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def test_resume_after_sigkill_matches_an_uninterrupted_run(llama_dir, tmp_path):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    data = write_jsonl(tmp_path / "train.jsonl", arith_records(24))
    killed_out = tmp_path / "killed"
    common = dict(steps=STEPS, batch_size=4, lr=3e-3, warmup_steps=1, eval_data=str(data))
    command = [
        sys.executable, "-m", "suntool", "finetune", str(source), "--data", str(data), "-o", str(killed_out),
        "--steps", str(STEPS), "--batch-size", "4", "--lr", "0.003", "--warmup-steps", "1", "--device", "cpu",
        "--eval-data", str(data), "--save-every", str(SAVE_EVERY),
    ]
    work = tiny_config(source, data, killed_out, **common).work_dir
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while True:
            newest = latest_checkpoint(work)
            if newest is not None and int(newest.name.split("-")[1]) >= 2 * SAVE_EVERY:
                process.send_signal(signal.SIGKILL)
                break
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not killed_out.exists()  # an interrupted run leaves no artifact

    resumed = finetune(tiny_config(source, data, killed_out, save_every=SAVE_EVERY, resume=True, **common))
    assert resumed.summary.resumed_from is not None and 2 * SAVE_EVERY <= resumed.summary.resumed_from < STEPS
    straight = finetune(tiny_config(source, data, tmp_path / "straight", **common))

    assert resumed.summary.final_loss == pytest.approx(straight.summary.final_loss, rel=1e-4)
    assert resumed.summary.final_eval_loss == pytest.approx(straight.summary.final_eval_loss, rel=1e-4)
    assert resumed.summary.initial_eval_loss == pytest.approx(straight.summary.initial_eval_loss, rel=1e-6)
    a, b = state_dict_of(killed_out / "prefill"), state_dict_of(tmp_path / "straight" / "prefill")
    for name in a:
        assert a[name].allclose(b[name], rtol=1e-4, atol=1e-6), name
    steps = [line for line in (killed_out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == STEPS  # the metrics of the killed part were kept, none twice


def test_resume_refuses_other_settings(llama_dir, tmp_path):
    from suntool.errors import SuntoolError

    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    data = write_jsonl(tmp_path / "train.jsonl", arith_records(8))
    out = tmp_path / "out"
    config = tiny_config(source, data, out, steps=4, save_every=2)
    config.work_dir.mkdir(parents=True)
    from suntool.split import write_config_yaml
    from suntool.train.finetune import saved_config

    write_config_yaml(config.work_dir / "finetune.yaml", saved_config(config))
    (config.work_dir / "step-000002").mkdir()
    with pytest.raises(SuntoolError, match="other settings \\(lr: checkpoint 0.003 vs now 0.01\\)"):
        finetune(config.replace(lr=0.01, resume=True))
