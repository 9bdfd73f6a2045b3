"""`suntool.json`: the manifest of a split artifact, as frozen dataclasses.

An artifact is a directory holding `suntool.json`, a `prefill/` and a `decode/` half (each
an ordinary HF checkpoint, or a reference by path into the shared store). The manifest
says which half is shared, the sha256 fingerprint of each half's tensors, the handoff
convention, and for a trained task half the fingerprint of the shared half it was trained
against. `Manifest.from_dict` is the one place where a manifest is validated; every
error names the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from suntool.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "suntool.json"
MODES = ("sun", "prefillshare", "monolithic")
ROLES = ("shared", "task")
HALVES = ("prefill", "decode")


def shared_half_of(mode: str) -> str | None:
    """Which half a mode shares across task models: decode for SUN, prefill for PrefillShare."""
    return {"sun": "decode", "prefillshare": "prefill", "monolithic": None}[mode]


@dataclass(frozen=True)
class HalfEntry:
    """One half: where it lies, whether it is shared, and its tensor fingerprint."""

    path: str  # relative to the artifact dir, or an absolute path into the shared store
    role: str  # "shared" | "task"
    sha256: str
    adapter: str | None = None  # a PEFT adapter dir (relative) applied on top of `path`
    quantization: dict[str, Any] | None = None  # GPTQ block when the half is quantized
    trained_against: str | None = None  # fingerprint of the shared half this task half was trained with

    def resolve(self, artifact_dir: Path) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else Path(artifact_dir) / path


@dataclass(frozen=True)
class HandoffSpec:
    """The prefill→decode convention (see `suntool.handoff`)."""

    first_token: str = "decode"  # "decode" (decode recomputes the last prompt token) | "prefill"
    cache_layout: str = "hf-dynamic"


@dataclass(frozen=True)
class BaseModelInfo:
    """Where the halves came from."""

    source: str  # path or built-in name given to `suntool split`
    fingerprint: str  # sha256 of the source checkpoint's tensors


@dataclass(frozen=True)
class Manifest:
    format_version: int
    mode: str
    base: BaseModelInfo
    architecture: str
    model_type: str
    dtype: str
    handoff: HandoffSpec
    prefill: HalfEntry
    decode: HalfEntry
    created_by: str = field(default="")
    training: dict[str, Any] | None = None  # method, data, steps... of a fine-tuned artifact

    def half(self, name: str) -> HalfEntry:
        return {"prefill": self.prefill, "decode": self.decode}[name]

    @property
    def shared_half(self) -> str | None:
        return shared_half_of(self.mode)

    def with_half(self, name: str, entry: HalfEntry) -> Manifest:
        return replace(self, **{name: entry})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Validate `data` (parsed JSON) into a Manifest; `source` names the file in errors."""

        def fail(message: str) -> ArtifactError:
            return ArtifactError(f"{source}: {message}")

        if not isinstance(data, dict):
            raise fail("must hold a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise fail(
                f"format_version {version!r} is not supported by this suntool (it reads version "
                f"{FORMAT_VERSION}); upgrade suntool or re-create the artifact with `suntool split`"
            )

        def need(obj: dict, key: str, kind: type, where: str):
            if key not in obj:
                raise fail(f"missing field {where}{key!r}")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise fail(f"field {where}{key!r} must be a {kind.__name__}, got {value!r}")
            return value

        mode = need(data, "mode", str, "")
        if mode not in MODES:
            raise fail(f"field 'mode' must be one of {MODES}, got {mode!r}")

        def half(name: str) -> HalfEntry:
            raw = need(data, name, dict, "")
            where = f"{name}."
            role = need(raw, "role", str, where)
            if role not in ROLES:
                raise fail(f"field {where}role must be one of {ROLES}, got {role!r}")
            sha = need(raw, "sha256", str, where)
            if not sha.startswith("sha256:") or len(sha) != 71:
                raise fail(f"field {where}sha256 must look like 'sha256:<64 hex digits>', got {sha!r}")
            entry = HalfEntry(
                path=need(raw, "path", str, where),
                role=role,
                sha256=sha,
                adapter=raw.get("adapter"),
                quantization=raw.get("quantization"),
                trained_against=raw.get("trained_against"),
            )
            return entry

        prefill, decode = half("prefill"), half("decode")
        shared = shared_half_of(mode)
        for name, entry in (("prefill", prefill), ("decode", decode)):
            expected = "shared" if name == shared else "task"
            if entry.role != expected:
                raise fail(f"field {name}.role is {entry.role!r} but mode {mode!r} needs {expected!r}")
        base = need(data, "base", dict, "")
        handoff = data.get("handoff") or {}
        first_token = handoff.get("first_token", "decode")
        if first_token not in ("decode", "prefill"):
            raise fail(f"field handoff.first_token must be 'decode' or 'prefill', got {first_token!r}")
        training = data.get("training")
        if training is not None and not isinstance(training, dict):
            raise fail("field 'training' must be an object")
        return cls(
            format_version=version,
            mode=mode,
            base=BaseModelInfo(
                source=need(base, "source", str, "base."), fingerprint=need(base, "fingerprint", str, "base.")
            ),
            architecture=need(data, "architecture", str, ""),
            model_type=need(data, "model_type", str, ""),
            dtype=need(data, "dtype", str, ""),
            handoff=HandoffSpec(first_token=first_token, cache_layout=handoff.get("cache_layout", "hf-dynamic")),
            prefill=prefill,
            decode=decode,
            created_by=str(data.get("created_by", "")),
            training=training,
        )


def read_manifest(artifact_dir: Path) -> Manifest:
    """Load and validate `<artifact_dir>/suntool.json`."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.exists():
        raise ArtifactError(
            f"{artifact_dir} does not exist; create an artifact with `suntool split MODEL -o {artifact_dir}`"
        )
    path = artifact_dir / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{artifact_dir} has no {MANIFEST_NAME}, so it is not a suntool artifact; "
            f"create one with `suntool split {artifact_dir} -o OUT`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); re-create the artifact with `suntool split`") from err
    return Manifest.from_dict(data, source=str(path))
