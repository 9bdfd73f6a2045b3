"""FinetuneConfig: YAML + command-line overrides, validation messages, the shipped example configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from suntool.errors import SuntoolError
from suntool.train.config import FinetuneConfig

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("finetune_*.yaml"))


def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads_and_names_real_data(path):
    config = FinetuneConfig.load(path, {})
    assert config.config_file == str(path)
    assert (path.parents[1] / config.data).is_file(), f"{path.name}: data {config.data} is not in the repo"


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"finetune_sun.yaml", "finetune_prefillshare_lora.yaml",
                                          "finetune_full_dropbp.yaml"}


def test_flags_override_the_yaml_and_unset_flags_do_not(tmp_path):
    path = _write(tmp_path / "c.yaml", {"artifact": "a", "data": "d.jsonl", "out": "o", "steps": 50, "lr": 1e-3})
    config = FinetuneConfig.load(path, {"steps": 7, "lr": None, "out": Path("elsewhere")})
    assert (config.steps, config.lr, config.out, config.artifact) == (7, 1e-3, "elsewhere", "a")
    assert config.warmup == 1 and FinetuneConfig("a", "d", "o", steps=100).warmup == 10


def test_yaml_mistakes_name_the_file_and_key(tmp_path):
    with pytest.raises(SuntoolError, match=r"c\.yaml: unknown key 'stpes'"):
        FinetuneConfig.load(_write(tmp_path / "c.yaml", {"stpes": 3}), {"artifact": "a", "data": "d", "out": "o"})
    with pytest.raises(SuntoolError, match=r"c\.yaml: unknown key 'batch-size'; did you mean 'batch_size'"):
        FinetuneConfig.load(_write(tmp_path / "c.yaml", {"batch-size": 3}), {"artifact": "a", "data": "d", "out": "o"})
    with pytest.raises(SuntoolError, match=r"c\.yaml: key 'steps' must be an integer, got 'many'"):
        FinetuneConfig.load(_write(tmp_path / "c.yaml", {"steps": "many"}), {"artifact": "a", "data": "d", "out": "o"})
    with pytest.raises(SuntoolError, match=r"c\.yaml: dropbp \(--dropbp\) must be in \[0, 0.9\]"):
        FinetuneConfig.load(_write(tmp_path / "c.yaml", {"artifact": "a", "data": "d", "out": "o", "dropbp": 0.95}),
                            {})
    with pytest.raises(SuntoolError, match="missing data: pass --data"):
        FinetuneConfig.load(None, {"artifact": "a", "out": "o"})
    with pytest.raises(SuntoolError, match="does not exist"):
        FinetuneConfig.load(tmp_path / "nope.yaml", {})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("method", "lora", "method \\(--method\\) must be one of sun, prefillshare, full"),
    ("attention", "sliding", "attention \\(--attention\\) must be one of standard, affine"),
    ("steps", 0, "steps \\(--steps\\) must be at least 1"),
    ("batch_size", 0, "batch_size \\(--batch-size\\) must be at least 1"),
    ("warmup_steps", 500, "warmup_steps \\(--warmup-steps\\) must be between 0 and --steps"),
    ("eval_fraction", 1.0, "eval_fraction \\(--eval-fraction\\) must be in \\[0, 1\\)"),
    ("lora", -1, "lora \\(--lora\\) must be >= 0"),
])
def test_invalid_values_are_refused_with_the_flag_name(field, value, message):
    with pytest.raises(SuntoolError, match=message):
        FinetuneConfig("a", "d", "o", **{field: value}).validate()


def test_eval_data_and_fraction_are_exclusive():
    with pytest.raises(SuntoolError, match="cannot be combined with --eval-data"):
        FinetuneConfig("a", "d", "o", eval_data="e.jsonl", eval_fraction=0.1).validate()


def test_warmup_cosine_schedule():
    from suntool.train.loop import WarmupCosine

    schedule = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    values = [schedule(step) for step in range(21)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))
    assert values[20] == pytest.approx(0.1)


def test_step_sampler_covers_each_epoch_once_and_is_seeded():
    from suntool.train.loop import StepSampler

    sampler = StepSampler(size=10, global_batch=4, seed=1)
    stream = [i for step in range(5) for i in sampler.indices(step)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert StepSampler(10, 4, 1).indices(3) == sampler.indices(3)
    assert StepSampler(10, 4, 2).indices(0) != sampler.indices(0)
