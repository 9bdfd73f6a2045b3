"""Which task models a server holds, which halves they share, and loading each half once.

`plan_models(specs, share=..., mode=...)` opens every artifact (`suntool.artifact.open_artifact`:
fingerprints verified, and a task half trained against another shared half refused
unless `allow_mismatch`), checks the set can be served together, and returns a
`ModelPlan`: per task model its prefill group and decode group. A group is the unit that
runs one forward: the SUN decode group holds every model whose shared decode half has
one fingerprint (cross-model batching), a PrefillShare prefill group every model whose
shared prefill half has one fingerprint (cross-model prefix-cache hits). A task half is
its own group. With `share=False` (the `--no-share` baseline) every model gets dedicated
groups of its own.

Rules checked here (each a `SuntoolError` naming the artifacts and the fix): names are
unique; all artifacts have one mode (and `--mode`, when given, agrees); SUN artifacts
share one decode fingerprint, PrefillShare artifacts one prefill fingerprint; every half
has the same KV geometry (one paged pool serves them all).

`load_plan(plan, dtype)` loads each distinct half once (same fingerprint and adapter:
same weights in memory) and one tokenizer per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suntool.errors import SuntoolError

SERVE_MODES = ("sun", "prefillshare")


@dataclass(frozen=True)
class HalfKey:
    """Identity of loaded weights: the same fingerprint and adapter mean the same tensors."""

    sha256: str
    adapter: str | None
    path: str = field(compare=False)  # where to load it from (any of the copies)


@dataclass(frozen=True)
class GroupSpec:
    """A set of task models that run one half's forwards together."""

    key: str  # e.g. "decode:shared:sha256:4b5a…" or "prefill:task:math"
    half: str  # "prefill" | "decode"
    weights: HalfKey
    models: tuple[str, ...]
    shared: bool


@dataclass(frozen=True)
class ModelSpec:
    name: str
    ref: Any  # suntool.artifact.ArtifactRef
    prefill_group: str
    decode_group: str


@dataclass(frozen=True)
class ModelPlan:
    mode: str  # "sun" | "prefillshare" | "monolithic"
    share: bool
    models: tuple[ModelSpec, ...]
    groups: dict[str, GroupSpec] = field(hash=False)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


def _half_key(ref, half: str) -> HalfKey:
    entry = ref.manifest.half(half)
    adapter = None
    if entry.adapter:
        adapter_path = Path(entry.adapter)
        adapter = str(adapter_path if adapter_path.is_absolute() else (ref.path / adapter_path).resolve())
    return HalfKey(sha256=entry.sha256, adapter=adapter, path=str(ref.half_dir(half).resolve()))


def model_names(paths: list[str], names: list[str] | None) -> list[str]:
    """API names: `--name` values in order, else each artifact directory's name."""
    if names:
        if len(names) != len(paths):
            raise SuntoolError(f"got {len(names)} --name values for {len(paths)} artifacts; give one per artifact")
        result = list(names)
    else:
        result = [Path(str(p)).expanduser().resolve().name or str(p) for p in paths]
    seen = {}
    for name, path in zip(result, paths, strict=True):
        if name in seen:
            raise SuntoolError(
                f"two artifacts would both be served as {name!r} ({seen[name]} and {path}); "
                "name them with --name (once per artifact, in order)"
            )
        seen[name] = path
    return result


def plan_models(
    paths: list[str],
    *,
    names: list[str] | None = None,
    share: bool = True,
    mode: str | None = None,
    allow_mismatch: bool = False,
) -> ModelPlan:
    """Open and check the artifacts and decide the prefill/decode groups (no weights loaded)."""
    from suntool.artifact import open_artifact
    from suntool.handoff import check_pairable

    if not paths:
        raise SuntoolError("give at least one artifact to serve: suntool serve --local ART...")
    if mode is not None and mode not in SERVE_MODES:
        raise SuntoolError(f"--mode must be one of {SERVE_MODES}, got {mode!r}")
    api_names = model_names(paths, names)
    refs = [open_artifact(path, allow_mismatch=allow_mismatch) for path in paths]
    modes = {ref.manifest.mode for ref in refs}
    if len(modes) > 1:
        listing = ", ".join(f"{n} is {r.manifest.mode}" for n, r in zip(api_names, refs, strict=True))
        raise SuntoolError(f"artifacts served together must have one mode ({listing}); split them with one --mode")
    actual = modes.pop()
    if mode is not None and actual != mode:
        raise SuntoolError(
            f"--mode {mode} was asked for but the artifacts are {actual} artifacts; "
            f"re-split them with `suntool split MODEL -o OUT --mode {mode}` or drop --mode"
        )
    shared_half = {"sun": "decode", "prefillshare": "prefill"}.get(actual)
    if shared_half is not None:
        prints = {ref.manifest.half(shared_half).sha256 for ref in refs}
        if len(prints) > 1:
            listing = ", ".join(
                f"{n}: {r.manifest.half(shared_half).sha256[:19]}…" for n, r in zip(api_names, refs, strict=True)
            )
            raise SuntoolError(
                f"{actual} artifacts served together must share one {shared_half} half, but their {shared_half} "
                f"fingerprints differ ({listing}); serve artifacts split from the same base model"
            )
    first = refs[0]
    for name, ref in zip(api_names, refs, strict=True):
        for half in ("prefill", "decode"):
            try:
                check_pairable(getattr(ref, f"{half}_config"), first.decode_config)
            except SuntoolError as err:
                raise SuntoolError(
                    f"{name} ({ref.path}) cannot share a KV cache with {api_names[0]} ({first.path}): {err}"
                ) from err

    groups: dict[str, GroupSpec] = {}
    members: dict[str, list[str]] = {}
    specs = []
    for name, ref in zip(api_names, refs, strict=True):
        keys = {}
        for half in ("prefill", "decode"):
            entry = ref.manifest.half(half)
            weights = _half_key(ref, half)
            shared = share and entry.role == "shared"
            key = f"{half}:shared:{entry.sha256}:{weights.adapter}" if shared else f"{half}:{name}"
            if key not in groups:
                groups[key] = GroupSpec(key=key, half=half, weights=weights, models=(), shared=shared)
                members[key] = []
            members[key].append(name)
            keys[half] = key
        specs.append(ModelSpec(name=name, ref=ref, prefill_group=keys["prefill"], decode_group=keys["decode"]))
    groups = {key: GroupSpec(g.key, g.half, g.weights, tuple(members[key]), g.shared) for key, g in groups.items()}
    return ModelPlan(mode=actual, share=share, models=tuple(specs), groups=groups)


@dataclass
class LoadedPlan:
    plan: ModelPlan
    weights: dict[HalfKey, Any]  # HalfKey -> model
    tokenizers: dict[str, Any]  # model name -> tokenizer

    def group_model(self, key: str):
        return self.weights[self.plan.groups[key].weights]


def load_plan(plan: ModelPlan, *, dtype: str | None = "float32", device: str = "cpu", progress=None) -> LoadedPlan:
    """Load the weights every group runs, each distinct half once, and each model's tokenizer."""
    from suntool.artifact import load_half
    from suntool.checkpoint import load_tokenizer

    say = progress or (lambda _message: None)
    weights: dict[HalfKey, Any] = {}
    for group in plan.groups.values():
        key = group.weights
        if key not in weights:
            spec = plan.model(group.models[0])
            say(f"loading the {group.half} half of {', '.join(group.models)} ({key.sha256[:19]}…)")
            weights[key] = load_half(spec.ref, group.half, dtype, device)
    tokenizers = {spec.name: load_tokenizer(spec.ref.prefill_dir) for spec in plan.models}
    return LoadedPlan(plan=plan, weights=weights, tokenizers=tokenizers)
