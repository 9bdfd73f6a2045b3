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
                trained_against=entry.trained_against,
            )
        )
    return ArtifactReport(
        path=ref.path, mode=manifest.mode, architecture=manifest.architecture, dtype=manifest.dtype,
        first_token=manifest.handoff.first_token, base=manifest.base.source, halves=tuple(halves),
        training=manifest.training,
    )
