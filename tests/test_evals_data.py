"""The shipped splits in evals/data equal, byte for byte, what the generators write with the recorded seed."""

from __future__ import annotations

import pytest

from suntool.evals.tasks import (
    ALL_TASKS,
    BUNDLED,
    DATA_DIR,
    bundled_path,
    load_bundled,
    split_records,
    to_jsonl,
)


def test_every_task_ships_data():
    assert set(BUNDLED) == set(ALL_TASKS)
    assert sorted(p.name for p in DATA_DIR.iterdir()) == sorted(BUNDLED)
    total = sum(path.stat().st_size for path in DATA_DIR.rglob("*.jsonl"))
    assert total < 3_000_000, f"{total} bytes of shipped data"


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_shipped_data_matches_generator(name):
    spec = BUNDLED[name]
    expected = split_records(name, spec.n_train, spec.n_test, spec.seed)
    for split, records in expected.items():
        shipped = bundled_path(name, split).read_text(encoding="utf-8")
        assert shipped == to_jsonl(records), (
            f"evals/data/{name}/{split}.jsonl drifted from the generator; if the change is intended, run "
            "`python -c 'from suntool.evals.tasks import write_bundled_data; write_bundled_data()'`"
        )
    assert len(load_bundled(name, "test")) == spec.n_test
    assert len(load_bundled(name, "train")) == spec.n_train
