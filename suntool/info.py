"""What an artifact holds: the data behind `suntool info` (no printing here).

`describe(spec, verify=False)` validates the artifact like every other command does (the
shared half is always checked against its fingerprint unless `verify` is False and the
caller only wants a description) and reports, per half, its role, parameter count,
tensor bytes, fingerprint, location, and — with `verify=True` — whether its tensors still
match the fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HalfReport:
    name: str
    role: str
    parameters: int
    bytes: int
    fingerprint: str
    location: Path
    verified: bool | None  # None: not checked
    quantization: dict | None
    trained_against: str | None
    adapter: str | None = None


@dataclass(frozen=True)
class ArtifactReport:
    path: Path
    mode: str
    architecture: str
    dtype: str
    first_token: str
    base: str
    halves: tuple[HalfReport, ...]
    training: dict | None


def describe(spec: str | Path, *, verify: bool = False) -> ArtifactReport:
    from suntool.artifact import open_artifact
    from suntool.fingerprint import checkpoint_stats, fingerprint_checkpoint

    # Describing must work on a damaged artifact too, so fingerprints are compared here, not refused.
    ref = open_artifact(spec, verify_shared=False, allow_mismatch=True)
    manifest = ref.manifest
    halves = []
    for name in ("prefill", "decode"):
        entry = manifest.half(name)
        directory = ref.half_dir(name)
        parameters, size = checkpoint_stats(directory)
        verified = (fingerprint_checkpoint(directory) == entry.sha256) if verify else None
        halves.append(
            HalfReport(
                name=name, role=entry.role, parameters=parameters, bytes=size, fingerprint=entry.sha256,
                location=directory, verified=verified, quantization=entry.quantization,
                trained_against=entry.trained_against, adapter=entry.adapter,
            )
        )
    return ArtifactReport(
        path=ref.path, mode=manifest.mode, architecture=manifest.architecture, dtype=manifest.dtype,
        first_token=manifest.handoff.first_token, base=manifest.base.source, halves=tuple(halves),
        training=manifest.training,
    )


def training_lines(training: dict) -> list[str]:
    """A fine-tuned artifact's `training` block as a few readable lines (unknown keys are skipped)."""

    def present(*keys: str) -> bool:
        return all(training.get(key) is not None for key in keys)

    recipe = [f"method={training.get('method')}"]
    for key, label in (("lora", "lora"), ("dropbp", "dropbp"), ("steps", "steps"), ("global_batch", "batch"),
                       ("lr", "lr"), ("precision", "precision"), ("world_size", "processes")):
        value = training.get(key)
        if value not in (None, 0, 0.0) and not (key == "world_size" and value == 1):
            recipe.append(f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}")
    if training.get("attention") not in (None, "standard"):
        recipe.append(f"attention={training['attention']}")
    lines = ["  " + "  ".join(recipe)]
    results = []
    if present("final_train_loss"):
        results.append(f"train loss {training['final_train_loss']:.4f}")
    if present("final_eval_loss"):
        before = f"{training['initial_eval_loss']:.4f} → " if present("initial_eval_loss") else ""
        results.append(f"eval loss {before}{training['final_eval_loss']:.4f}")
    if present("tokens", "seconds"):
        results.append(f"{training['tokens']:,} tokens in {training['seconds']:.0f} s")
    if results:
        lines.append("  " + " · ".join(results))
    if present("data"):
        digest = f" ({training['data_sha256'][:19]}…)" if present("data_sha256") else ""
        examples = f", {training['train_examples']} examples" if present("train_examples") else ""
        lines.append(f"  data {training['data']}{digest}{examples}")
    started = training.get("started_from") or {}
    if started.get("artifact"):
        lines.append(f"  started from {started['artifact']}")
    return lines
