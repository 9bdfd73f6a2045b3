"""Plain progress lines when stdout is not a terminal: finetune, quantize and eval print to a log.

Unit tests of `ProgressLines` / `RequestProgress` with a fake clock, and the real commands run as
child processes whose stdout is a file (what `suntool finetune ... > log` does).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

from suntool.commands._ui import ProgressLines, RequestProgress, format_duration, plain_progress
from tests.test_train_support import arith_records, make_artifact, subprocess_env, write_jsonl

LINE = re.compile(r"^finetune step (\d+)/(\d+) \(\d+%\) · loss [0-9.]+ · [0-9,]+ tok/s · elapsed \d+:\d\d:\d\d · "
                  r"ETA (\d+:\d\d:\d\d|–)$")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_come_at_the_interval_with_first_and_last_and_an_eta():
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("finetune", 100, interval=10, stream=out, clock=clock)
    assert lines.update(0, force=True)  # the start
    printed = []
    for step in range(1, 101):
        clock.now += 2.0  # 2 s per step
        printed.append(lines.update(step, loss=1.0 / step, tokens_per_s=500.0))
    text = out.getvalue().splitlines()
    assert printed.count(True) == 20  # every 5th step (10 s), the last among them
    assert printed[-1] and printed[4] and not printed[0]
    assert text[0].startswith("finetune step 0/100 (0%) · elapsed 0:00:00 · ETA –")
    assert text[1] == "finetune step 5/100 (5%) · loss 0.2000 · 500 tok/s · elapsed 0:00:10 · ETA 0:03:10"
    assert text[-1].startswith("finetune step 100/100 (100%)") and text[-1].endswith("ETA 0:00:00")


def test_eta_counts_only_what_this_run_did_after_a_resume():
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("finetune", 100, interval=0, stream=out, clock=clock)
    lines.update(50, force=True)
    clock.now += 30
    lines.update(60)  # 10 steps in 30 s -> 40 left take 120 s
    assert out.getvalue().splitlines()[-1].endswith("ETA 0:02:00")
    assert format_duration(3725) == "1:02:05"


def test_request_progress_starts_a_phase_per_lm_eval_call():
    clock, out = Clock(), io.StringIO()
    progress = RequestProgress("eval", interval=0, stream=out, clock=clock)
    progress("loglikelihood", 8, 32, 1000)
    clock.now += 4
    progress("loglikelihood", 16, 32, 2000)  # 2000 tokens in 4 s
    clock.now += 4
    progress("generate_until", 4, 8, 64)  # a new phase: its own total and rate
    text = out.getvalue().splitlines()
    assert text[0].startswith("eval loglikelihood request 8/32 (25%) · elapsed")
    assert text[1].startswith("eval loglikelihood request 16/32 (50%) · 500 tok/s · elapsed 0:00:04 · ETA 0:00:08")
    assert text[2].startswith("eval generate_until request 4/8 (50%)")


def test_the_mode_follows_stdout_and_the_environment(monkeypatch):
    monkeypatch.setenv("SUNTOOL_PROGRESS", "rich")
    assert not plain_progress()
    monkeypatch.setenv("SUNTOOL_PROGRESS", "plain")
    assert plain_progress()
    monkeypatch.setenv("SUNTOOL_PROGRESS", "auto")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    assert plain_progress()


def _run_to_file(tmp_path, *argv: str, interval: str = "0") -> str:
    log = tmp_path / "log.txt"
    env = {**subprocess_env(), "SUNTOOL_PROGRESS_INTERVAL": interval}
    env.pop("SUNTOOL_PROGRESS", None)
    with log.open("w") as handle:  # stdout is a file, as with `> log`
        result = subprocess.run([sys.executable, "-m", "suntool", *argv], stdout=handle, stderr=subprocess.PIPE,
                                env=env, text=True, timeout=600)
    text = log.read_text()
    assert result.returncode == 0, (text, result.stderr)
    assert "\x1b[" not in text and "\r" not in text  # no terminal control codes in a log
    return text


def test_finetune_to_a_file_prints_steps_loss_rate_and_eta(llama_dir, tmp_path):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    data = write_jsonl(tmp_path / "train.jsonl", arith_records(16))
    text = _run_to_file(tmp_path, "finetune", str(source), "--data", str(data), "-o", str(tmp_path / "out"),
                        "--steps", "4", "--batch-size", "4", "--eval-fraction", "0.25", "--device", "cpu")
    lines = text.splitlines()
    steps = [LINE.match(line) for line in lines if line.startswith("finetune step") and "loss" in line]
    assert [int(m.group(1)) for m in steps if m] == [1, 2, 3, 4], text
    assert steps[-1].group(3) == "0:00:00"
    assert any(line.startswith("· loading the halves") for line in lines)
    assert any("held-out loss before training" in line for line in lines)
    assert any(line.startswith("· step 4: eval loss") for line in lines)
    assert f"wrote {tmp_path / 'out'}" in text


def test_finetune_lines_are_rate_limited(llama_dir, tmp_path):
    source = make_artifact(llama_dir, tmp_path / "art", "sun")
    data = write_jsonl(tmp_path / "train.jsonl", arith_records(16))
    text = _run_to_file(tmp_path, "finetune", str(source), "--data", str(data), "-o", str(tmp_path / "out"),
                        "--steps", "6", "--batch-size", "4", "--device", "cpu", interval="3600")
    steps = [line for line in text.splitlines() if line.startswith("finetune step")]
    assert [line.split()[2] for line in steps] == ["0/6", "1/6", "6/6"]  # start, first step, last


def test_quantize_to_a_file_prints_linears_and_eta(llama_dir, tmp_path):
    from suntool.split import SplitConfig, split

    split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    text = _run_to_file(tmp_path, "quantize", str(tmp_path / "art"), "--group-size", "32", "--calib-samples", "8",
                        "--calib-seq-len", "64")
    lines = [line for line in text.splitlines() if line.startswith("quantize linear")]
    assert lines and lines[-1].startswith("quantize linear 14/14 (100%) · elapsed")
    assert lines[-1].endswith("ETA 0:00:00")
    assert any(line.startswith("· calibrating on 8 samples") for line in text.splitlines())
    assert "wrote" in text


def test_eval_to_a_file_prints_requests(llama_dir, tmp_path):
    from suntool.split import SplitConfig, split

    split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    text = _run_to_file(tmp_path, "eval", str(tmp_path / "art"), "--tasks", "suntool_arith_mc,suntool_arith",
                        "--limit", "4", "--batch-size", "2")
    lines = text.splitlines()
    assert any(line.startswith("eval loglikelihood request 16/16 (100%)") for line in lines), text
    assert any(line.startswith("eval generate_until request 4/4 (100%)") for line in lines), text
