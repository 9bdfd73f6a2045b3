"""`FinetuneConfig`: every setting of one `suntool finetune` run, as a frozen dataclass.

`FinetuneConfig.load(yaml_path, overrides)` reads a YAML file of the same fields (the
`finetune.yaml` written beside every output is such a file, so a run can be repeated
with `--config OUT/finetune.yaml`), applies the flags the user gave on the command line
on top, and validates the result. Validation lives in `validate()`: every error is a
`SuntoolError` naming the field (and the YAML file when it came from one) and what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from suntool.errors import SuntoolError

METHODS = ("sun", "prefillshare", "full")
ATTENTION_VARIANTS = ("standard", "affine")  # affine: Affine-Scaled Attention, see methods.apply_attention
PRECISIONS = ("fp32", "bf16")

# Fields that may differ between a run and its --resume without changing what is trained.
RESUME_FREE_FIELDS = frozenset({"resume", "force", "save_every", "log_every", "eval_every", "config_file"})


@dataclass(frozen=True)
class FinetuneConfig:
    artifact: str  # artifact dir from `suntool split`, a plain HF checkpoint or a built-in name (full only)
    data: str  # training JSONL
    out: str  # the new artifact dir
    method: str = "sun"  # sun (train prefill) | prefillshare (train decode) | full (monolithic baseline)
    lora: int = 0  # LoRA rank; 0 trains all weights of the task half
    lora_alpha: float | None = None  # default 2 * rank
    lora_dropout: float = 0.0
    dropbp: float = 0.0  # DropBP target drop rate P in [0, 0.9]; 0 disables it
    attention: str = "standard"
    steps: int = 100  # optimizer steps
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # default: 10% of steps
    weight_decay: float = 0.0
    batch_size: int = 4  # examples per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_length: int = 512  # tokens of prompt + completion
    truncate: bool = False
    eval_data: str | None = None
    eval_fraction: float = 0.0  # held out from --data when --eval-data is not given
    eval_every: int = 0  # 0: evaluate before training and at the end only
    save_every: int = 0  # 0: no intermediate checkpoints
    log_every: int = 1
    resume: bool = False
    seed: int = 0
    bf16: bool = False  # bf16 autocast (weights and optimizer stay fp32)
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda
    force: bool = False
    config_file: str | None = None  # the YAML this config was read from (informational)

    @property
    def global_batch_note(self) -> str:
        return f"batch_size {self.batch_size} x grad_accum {self.grad_accum} x processes"

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(0, round(0.1 * self.steps))

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def work_dir(self) -> Path:
        """Checkpoints, metrics and the config of a run in progress: `<out>.train/`."""
        out = Path(self.out)
        return out.parent / f"{out.name}.train"

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> FinetuneConfig:
        """Raise `SuntoolError` for the first invalid field; return self."""
        where = f"{self.config_file}: " if self.config_file else ""

        def bad(field: str, message: str) -> SuntoolError:
            flag = "--" + field.replace("_", "-")
            return SuntoolError(f"{where}{field} ({flag}) {message}")

        if self.method not in METHODS:
            raise bad("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.attention not in ATTENTION_VARIANTS:
            raise bad("attention", f"must be one of {', '.join(ATTENTION_VARIANTS)}, got {self.attention!r} "
                      "(other attention variants are not available in this version)")
        checks = [
            ("steps", self.steps >= 1, "must be at least 1"),
            ("lr", self.lr > 0, "must be positive"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("warmup_steps", self.warmup_steps is None or 0 <= self.warmup_steps <= self.steps,
             "must be between 0 and --steps"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("grad_accum", self.grad_accum >= 1, "must be at least 1"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)"),
            ("max_length", self.max_length >= 2, "must be at least 2"),
            ("lora", self.lora >= 0, "must be >= 0 (0 trains all weights)"),
            ("lora_alpha", self.lora_alpha is None or self.lora_alpha > 0, "must be positive"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("dropbp", 0 <= self.dropbp <= 0.9, "must be in [0, 0.9] (each layer's drop rate is capped at 0.9)"),
            ("eval_fraction", 0 <= self.eval_fraction < 1, "must be in [0, 1)"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("log_every", self.log_every >= 1, "must be at least 1"),
            ("device", self.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
        ]
        for field, ok, message in checks:
            if not ok:
                raise bad(field, f"{message}, got {getattr(self, field)!r}")
        if self.eval_data and self.eval_fraction:
            raise bad("eval_fraction", "cannot be combined with --eval-data; pass one of them")
        return self

    @classmethod
    def load(cls, yaml_path: Path | None, overrides: dict[str, Any]) -> FinetuneConfig:
        """Fields from `yaml_path` (if any), then `overrides` (flags given on the command line)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(read_yaml(Path(yaml_path)))
            values["config_file"] = str(yaml_path)
        values.update({key: value for key, value in overrides.items() if value is not None})
        for key in ("artifact", "data", "out"):
            if not values.get(key):
                flag = {"artifact": "the ARTIFACT argument", "data": "--data", "out": "-o/--out"}[key]
                raise SuntoolError(f"missing {key}: pass {flag} or set '{key}' in the --config YAML")
        for key in ("artifact", "data", "out", "eval_data"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        return cls(**values).validate()


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a finetune YAML and check its keys and value types against `FinetuneConfig`."""
    import yaml

    if not path.is_file():
        raise SuntoolError(f"--config {path} does not exist; pass a YAML file of finetune settings")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SuntoolError(f"{path} is not valid YAML ({err}); fix the file") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SuntoolError(f"{path} must hold a mapping of finetune settings (key: value)")
    known = {f.name: f for f in fields(FinetuneConfig)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            close = [name for name in known if name.replace("_", "") == str(key).replace("-", "").replace("_", "")]
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise SuntoolError(f"{path}: unknown key {key!r}{hint}")
        if value is None:
            values[key] = None
            continue
        expected = _field_type(known[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[expected]
            raise SuntoolError(f"{path}: key {key!r} must be {kind}, got {value!r}")
        values[key] = value
    return values


def _field_type(field: dataclasses.Field) -> type:
    text = str(field.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return kind
    return str
