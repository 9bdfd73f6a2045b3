"""examples/sun_vs_baselines.py end to end on a tiny model: seeds, per-record scores, intervals, the plot, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_train_support import one_torch_thread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture()
def experiment(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("sun_vs_baselines", "experiment_report", "experiment_stats"):
        sys.modules.pop(name, None)
    import sun_vs_baselines

    return sun_vs_baselines


def test_plan_runs_seed_zero_first_then_seeds_then_single_seed_rows(experiment):
    order = experiment.plan(list(experiment.DEFAULT_VARIANTS), 3)
    assert order[:5] == [("base", None), ("full", 0), ("sun", 0), ("prefillshare", 0), ("mismatched", 0)]
    assert order[5:11] == [("full", 1), ("sun", 1), ("prefillshare", 1), ("full", 2), ("sun", 2), ("prefillshare", 2)]
    assert order[11:] == [("full-lora", 0), ("sun-lora", 0), ("prefillshare-lora", 0)]
    with_dropbp = experiment.seeded_order(["full", "full-dropbp0.875", "sun"], 2)
    assert with_dropbp == [("full", 0), ("sun", 0), ("full", 1), ("sun", 1), ("full-dropbp0.875", 0),
                           ("full-dropbp0.875", 1)]
    assert experiment.TRAINED["full-lora-dropbp0.5"] == ("full", "sun", True, "standard", 0.5)


def test_seeds_scores_intervals_plot_and_resume(experiment, llama_dir, tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["--model", str(llama_dir), "--work", str(work), "--task", "arith", "--variant", "base", "--variant", "full",
            "--variant", "sun", "--seeds", "2", "--train", "8", "--val", "4", "--test", "6", "--steps", "2",
            "--eval-every", "1", "--batch-size", "2", "--max-new-tokens", "3"]
    assert experiment.main(argv) == 0
    rows = json.loads((work / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in rows] == [("base", None), ("full", 0), ("full", 1), ("sun", 0),
                                                         ("sun", 1)]
    for row in rows:
        assert len(row["scores"]) == 6 and row["n"] == 6 and row["pair_nll"] > 0
        assert row["accuracy"] == sum(row["scores"]) / 6
    assert {r["generated_on"] for r in rows} == {"engine"}  # every row has a directory the engine loads
    full0 = json.loads((work / "arith" / "eval-full-s0.json").read_text())  # the reference path answers the same
    from suntool.artifact import load_artifact

    loaded = load_artifact(work / "arith" / "full-s0")
    test = [json.loads(line) for line in (work / "arith" / "test.jsonl").read_text().splitlines()]
    reference = experiment.score_answers(loaded, "arith", test, 3)
    assert reference["generated_on"] == "reference" and reference["scores"] == full0["scores"]
    assert [e["output"] for e in reference["examples"]] == [e["output"] for e in full0["examples"]]
    trained = [r for r in rows if r["variant"] != "base"]
    assert all([step for step, _ in r["eval_curve"]] == [0, 1, 2] for r in trained)  # the held-out curve
    sun0 = json.loads((work / "arith" / "sun-s0" / "suntool.json").read_text())["training"]
    sun1 = json.loads((work / "arith" / "sun-s1" / "suntool.json").read_text())["training"]
    assert sun0["final_train_loss"] != sun1["final_train_loss"]  # seeds differ
    assert (work / "arith" / "val.jsonl").read_text().count("\n") == 4
    assert (work / "arith" / "test.jsonl").read_text().count("\n") == 6
    summary = (work / "summary.md").read_text()
    assert "### arith (6 test records)" in summary
    assert "| sun | 0,1 |" in summary and " t |" in summary and " W |" in summary  # seeds: t; base: Wilson
    assert "| sun − full | 0,1 |" in summary
    assert (work / "loss_curves.png").stat().st_size > 1000

    capsys.readouterr()
    assert experiment.main(argv) == 0  # everything finished: nothing is trained or scored again
    out = capsys.readouterr().out
    assert "arith: sun-s1 already trained" in out and "training" not in out
    assert experiment.main([*argv, "--plan"]) == 0
    assert "sun-s1" in capsys.readouterr().out
