"""`suntool eval`: bundled offline tasks through the `suntool` lm-eval model, table + files, bad input."""

from __future__ import annotations

import json

import pytest

from suntool.split import SplitConfig, split
from tests.test_cli import assert_user_error, run_cli

BUNDLED = "suntool_arith,suntool_program,suntool_funcall,suntool_arith_mc,suntool_facts_mc"


@pytest.fixture(scope="module")
def two_artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=root / "sun-a"))
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=root / "ps-b", mode="prefillshare"))
    return root


def test_eval_limit_5_on_every_bundled_task(capsys, two_artifacts, tmp_path):
    out = tmp_path / "results"
    code, stdout, _ = run_cli(
        capsys, "eval", str(two_artifacts / "sun-a"), str(two_artifacts / "ps-b"), "--tasks", BUNDLED,
        "--limit", "5", "--output", str(out), "--log-samples", "--batch-size", "4",
    )
    assert code in (0, None)
    for task in BUNDLED.split(","):
        assert task in stdout
    assert "sun-a" in stdout and "ps-b" in stdout
    for name in ("sun-a", "ps-b"):
        results = json.loads((out / name / "results.json").read_text())
        assert set(BUNDLED.split(",")) <= set(results["results"])
        for task in BUNDLED.split(","):
            assert 0.0 <= results["results"][task]["acc,none"] <= 1.0
            samples = (out / name / f"samples_{task}.jsonl").read_text().splitlines()
            assert len(samples) == 5
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == "artifact,task_metric,value,stderr" and len(summary) > 10
    metrics = {row.split(",")[1] for row in summary[1:]}
    assert "suntool_arith/acc" in metrics and not any("sample_len" in m or "alias" in m for m in metrics)
    assert "| sun-a |" in (out / "summary.md").read_text()
    # the same weights under both splits score the same: the handoff is exact
    a = json.loads((out / "sun-a" / "results.json").read_text())["results"]
    b = json.loads((out / "ps-b" / "results.json").read_text())["results"]
    for task in BUNDLED.split(","):
        assert a[task]["acc,none"] == b[task]["acc,none"]


def test_eval_on_the_engine_answers_as_the_reference_path(capsys, two_artifacts, tmp_path):
    """`--engine`: the generation tasks' samples (every answer) equal the reference path's."""
    generation = "suntool_arith,suntool_program,suntool_funcall"
    outputs = {}
    for label, extra in (("reference", ()), ("engine", ("--engine",))):
        out = tmp_path / label
        code, stdout, _ = run_cli(capsys, "eval", str(two_artifacts / "sun-a"), "--tasks", generation, "--limit", "6",
                                  "--output", str(out), "--log-samples", *extra)
        assert code in (0, None) and "suntool_arith" in stdout
        outputs[label] = {task: [json.loads(line)["resps"] for line in
                                 (out / "sun-a" / f"samples_{task}.jsonl").read_text().splitlines()]
                          for task in generation.split(",")}
    assert outputs["engine"] == outputs["reference"]
    assert all(len(answers) == 6 for answers in outputs["engine"].values())


def test_eval_bad_input(capsys, two_artifacts, tmp_path):
    art = str(two_artifacts / "sun-a")
    assert_user_error(capsys, ["eval", art, "--tasks", "no_such_task"], "unknown task", "suntool_arith")
    assert_user_error(capsys, ["eval", art, "--tasks", "hellaswag"], "not available offline", "--include-path")
    assert_user_error(capsys, ["eval", str(tmp_path / "missing"), "--tasks", "suntool_arith"], "does not exist")
    assert_user_error(capsys, ["eval", art, "--tasks", "suntool_arith", "--limit", "0"], "--limit")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):  # running as root: permissions do not bind, use a file as the dir
            locked = tmp_path / "a-file"
            locked.write_text("x")
            target = locked / "out"
        else:
            target = locked / "out"
        assert_user_error(capsys, ["eval", art, "--tasks", "suntool_arith", "--output", str(target)], "not writable")
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_row_labels_tell_same_named_artifacts_apart():
    from suntool.evaluate import artifact_labels

    assert artifact_labels(["runs/program/sun", "runs/arith/sun", "smollm2-135m"]) == [
        "program/sun", "arith/sun", "smollm2-135m"]
    assert artifact_labels(["x/task", "x/task"]) == ["x/task", "x/task-2"]
    assert artifact_labels(["sun", "deep/sun"]) == ["sun", "deep/sun"]
