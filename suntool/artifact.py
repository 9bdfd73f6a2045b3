"""Opening a split artifact: validate, verify fingerprints, check pairing, load the halves.

`open_artifact(path)` is cheap-ish (no torch): it reads the manifest, checks both halves
are valid checkpoints, verifies the shared half's tensors against its fingerprint (and
the task half's with `verify_task=True`), checks the halves can exchange a KV cache, and
refuses a task half trained against another shared half unless `allow_mismatch`.
A plain HF checkpoint directory (no `suntool.json`) or a built-in model name opens as a
monolithic artifact whose two halves are the same weights.

`load_artifact(path)` then loads the models (once when both halves are the same weights)
and the tokenizer into a `LoadedArtifact`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suntool.errors import ArtifactError, FingerprintMismatch
from suntool.manifest import FORMAT_VERSION, MANIFEST_NAME, BaseModelInfo, HalfEntry, HandoffSpec, Manifest


@dataclass(frozen=True)
class ArtifactRef:
    """A validated artifact on disk: its manifest and the resolved half directories."""

    path: Path
    manifest: Manifest
    prefill_dir: Path
    decode_dir: Path
    prefill_config: dict
    decode_config: dict

    @property
    def name(self) -> str:
        return self.path.name

    def half_dir(self, name: str) -> Path:
        return {"prefill": self.prefill_dir, "decode": self.decode_dir}[name]


@dataclass
class LoadedArtifact:
    """An opened artifact with its models in memory."""

    ref: ArtifactRef
    prefill_model: Any
    decode_model: Any
    tokenizer: Any

    @property
    def manifest(self) -> Manifest:
        return self.ref.manifest

    @property
    def shares_weights(self) -> bool:
        return self.prefill_model is self.decode_model


def _monolithic(path: Path, spec: str) -> ArtifactRef:
    from suntool.checkpoint import inspect_checkpoint
    from suntool.fingerprint import fingerprint_checkpoint

    info = inspect_checkpoint(path)
    fingerprint = fingerprint_checkpoint(path)
    entry = HalfEntry(path=str(path), role="task", sha256=fingerprint, quantization=info.quantization)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        mode="monolithic",
        base=BaseModelInfo(source=spec, fingerprint=fingerprint),
        architecture=info.architecture,
        model_type=info.model_type,
        dtype=str(info.config.get("dtype") or info.config.get("torch_dtype") or "auto"),
        handoff=HandoffSpec(),
        prefill=entry,
        decode=entry,
    )
    return ArtifactRef(path, manifest, path, path, info.config, info.config)


def verify_half(ref_path: Path, name: str, entry: HalfEntry, directory: Path) -> None:
    """Raise `FingerprintMismatch` if the half's tensors no longer match `entry.sha256`."""
    from suntool.fingerprint import fingerprint_checkpoint

    actual = fingerprint_checkpoint(directory)
    if actual != entry.sha256:
        raise FingerprintMismatch(
            f"{ref_path}: the {entry.role} {name} half at {directory} no longer matches its fingerprint "
            f"(manifest {entry.sha256[:19]}…, tensors {actual[:19]}…); its weights were modified. "
            "Restore it or re-create the artifact with `suntool split`"
        )


def open_artifact(
    spec: str | Path, *, verify_task: bool = False, verify_shared: bool = True, allow_mismatch: bool = False
) -> ArtifactRef:
    """Validate an artifact (or plain checkpoint / built-in name) and return an `ArtifactRef`."""
    from suntool.checkpoint import inspect_checkpoint
    from suntool.handoff import check_pairable
    from suntool.manifest import read_manifest
    from suntool.models import resolve_model

    path = resolve_model(spec)
    if not (path / MANIFEST_NAME).is_file() and (path / "config.json").is_file():
        return _monolithic(path, str(spec))
    manifest = read_manifest(path)
    dirs, configs = {}, {}
    for name in ("prefill", "decode"):
        entry = manifest.half(name)
        directory = entry.resolve(path)
        if not directory.is_dir():
            raise ArtifactError(
                f"{path / MANIFEST_NAME}: {name}.path points at {directory}, which does not exist; "
                "the artifact is incomplete or its shared store was removed — re-create it with `suntool split`"
            )
        info = inspect_checkpoint(directory)
        if info.model_type != manifest.model_type:
            raise ArtifactError(
                f"{path}: the {name} half is a {info.model_type!r} model but the manifest says "
                f"{manifest.model_type!r}; pair halves split from the same base model"
            )
        if entry.role == "shared" and verify_shared or entry.role == "task" and verify_task:
            verify_half(path, name, entry, directory)
        dirs[name], configs[name] = directory, info.config
    check_pairable(configs["prefill"], configs["decode"])
    check_trained_against(path, manifest, allow_mismatch=allow_mismatch)
    return ArtifactRef(path, manifest, dirs["prefill"], dirs["decode"], configs["prefill"], configs["decode"])


def check_trained_against(path: Path, manifest: Manifest, *, allow_mismatch: bool = False) -> None:
    """Refuse a task half that was trained against another shared half than the one it is paired with."""
    shared_name = manifest.shared_half
    if shared_name is None or allow_mismatch:
        return
    task_name = "prefill" if shared_name == "decode" else "decode"
    task, shared = manifest.half(task_name), manifest.half(shared_name)
    if task.trained_against and task.trained_against != shared.sha256:
        raise ArtifactError(
            f"{path}: the task {task_name} half was trained against shared half {task.trained_against[:19]}… "
            f"but is paired with {shared.sha256[:19]}…; pair it with the half it was trained against, "
            "re-train it, or pass --allow-mismatch to run it anyway"
        )


def load_artifact(
    spec: str | Path,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    allow_mismatch: bool = False,
    verify_task: bool = False,
    kernels: bool = True,
) -> LoadedArtifact:
    """Open, validate and load an artifact's models and tokenizer."""
    from suntool.checkpoint import load_tokenizer

    ref = open_artifact(spec, allow_mismatch=allow_mismatch, verify_task=verify_task)
    manifest = ref.manifest
    prefill_model = load_half(ref, "prefill", dtype, device)
    adapters = manifest.prefill.adapter or manifest.decode.adapter
    same = manifest.prefill.sha256 == manifest.decode.sha256 and not adapters
    decode_model = prefill_model if same else load_half(ref, "decode", dtype, device)
    if kernels:  # norms, rotary, decode attention and w4a16 through suntool.kernels (SUNTOOL_KERNELS=ref|triton|auto)
        from suntool.kernel_path import enable_kernels, keep_only_cpu_int4_packs

        for model in {id(m): m for m in (prefill_model, decode_model)}.values():
            enable_kernels(model, strict=False)
            keep_only_cpu_int4_packs(model)  # bf16 4-bit halves on CPU: hold the int4 pack, not qweight too
    tokenizer = load_tokenizer(ref.prefill_dir)
    return LoadedArtifact(ref=ref, prefill_model=prefill_model, decode_model=decode_model, tokenizer=tokenizer)


def load_half(ref: ArtifactRef, name: str, dtype: str | None, device: str):
    """Load one half (merging its PEFT adapter, if any) as an eval-mode model."""
    from suntool.checkpoint import load_model

    entry = ref.manifest.half(name)
    model = load_model(ref.half_dir(name), dtype=dtype, device=device)
    if entry.adapter:
        from peft import PeftModel

        adapter_dir = Path(entry.adapter)
        if not adapter_dir.is_absolute():
            adapter_dir = ref.path / adapter_dir
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ArtifactError(f"{ref.path}: {name}.adapter {adapter_dir} is not a PEFT adapter directory")
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()
    return model
