"""examples/experiment_stats.py: t intervals over seeds, Wilson intervals, the paired bootstrap."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "examples" / "experiment_stats.py"
spec = importlib.util.spec_from_file_location("experiment_stats", PATH)
stats = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = stats  # dataclasses look their module up there
spec.loader.exec_module(stats)


def test_seed_interval_is_the_student_t_interval():
    interval = stats.seed_interval([0.30, 0.34, 0.32])
    assert interval.mean == pytest.approx(0.32)
    # s = 0.02, t(2) = 4.303: half-width 4.303 * 0.02 / sqrt(3)
    assert interval.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert stats.t_quantile(1) == pytest.approx(12.706) and stats.t_quantile(100) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="two seeds"):
        stats.seed_interval([0.3])


def test_wilson_interval_matches_the_textbook_values():
    interval = stats.wilson_interval(21, 60)  # 0.35: Wilson 95 % [0.2417, 0.4764] (by hand)
    assert interval.low == pytest.approx(0.2417, abs=5e-4) and interval.high == pytest.approx(0.4764, abs=5e-4)
    assert stats.wilson_interval(0, 300).low == pytest.approx(0, abs=1e-12) and stats.wilson_interval(0, 300).high > 0
    assert stats.wilson_interval(300, 300).high == pytest.approx(1) and stats.wilson_interval(300, 300).low < 1


def test_paired_bootstrap_sees_a_real_difference_and_not_an_absent_one():
    rng = random.Random(3)
    a = [float(rng.random() < 0.4) for _ in range(300)]
    better = [1.0 if x == 0 and rng.random() < 0.25 else x for x in a]  # ~+15 points on the same records
    shuffled = a[:]
    rng.shuffle(shuffled)  # same accuracy, records permuted: no systematic difference
    up = stats.paired_bootstrap(a, better, resamples=2000)
    assert up.mean > 0.1 and up.low > 0 and not stats.within_noise(up)
    none = stats.paired_bootstrap(a, a, resamples=500)
    assert none.mean == 0 and none.low == 0 and none.high == 0 and stats.within_noise(none)
    noisy = stats.paired_bootstrap(a, shuffled, resamples=2000)
    assert noisy.mean == pytest.approx(0) and stats.within_noise(noisy)
    # pairing makes the interval narrower than for the same accuracies on unrelated records
    near = [1.0 if x == 0 and rng.random() < 0.05 else x for x in a]
    paired = stats.paired_bootstrap(a, near, resamples=2000)
    assert paired.high - paired.low < noisy.high - noisy.low
    assert stats.paired_bootstrap(a, better, resamples=2000, seed=1) != up  # seeded resampling
    assert stats.paired_bootstrap(a, better, resamples=2000) == up  # and deterministic
    with pytest.raises(ValueError, match="same non-zero number"):
        stats.paired_bootstrap([1.0], [1.0, 0.0])


def test_mean_over_seeds_is_per_record():
    assert stats.mean_over_seeds([[1, 0, 1], [0, 0, 1], [1, 0, 0]]) == pytest.approx([2 / 3, 0, 2 / 3])
    with pytest.raises(ValueError, match="same records"):
        stats.mean_over_seeds([[1, 0], [1]])
