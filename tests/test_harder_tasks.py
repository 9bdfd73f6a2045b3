"""examples/harder_tasks.py: composed programs, scored by the standard program scorer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from suntool.errors import SuntoolError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import harder_tasks  # noqa: E402


def test_composed_programs_are_deterministic_disjoint_and_scored_by_the_program_scorer():
    from suntool.evals.tasks import TASKS

    train, test = harder_tasks.split("program", 40, 20)
    again_train, again_test = harder_tasks.split("program", 10, 20)
    assert test == again_test and train[:10] == again_train  # test does not depend on n_train
    assert len(train) == 40 and len(test) == 20
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    score = TASKS["program"].score
    for record in test:
        assert record["prompt"].startswith("Let ys be ") and record["prompt"].endswith("\nExpression:")
        assert record["expression"].count("xs") >= 1 and "(" in record["expression"]
        assert score(record["completion"], record) == 1.0  # the reference passes its own hidden tests
    # one step alone is not the answer: either family on its own fails the hidden tests
    for record in test:
        inner, outer = record["steps"]
        assert score(" " + inner, record) == 0.0 and score(" " + outer, record) == 0.0
    mean_length = sum(len(r["expression"]) for r in test) / len(test)
    standard = sum(len(r["expression"]) for r in TASKS["program"].generate(20, 0)) / 20
    assert mean_length > 1.5 * standard  # longer programs


def test_tasks_without_a_harder_variant_are_refused():
    with pytest.raises(SuntoolError, match="no harder variant of 'arith'"):
        harder_tasks.split("arith", 10, 10)
