"""Writing a fine-tuned artifact: the trained task half, the shared half by fingerprint.

`write_trained_artifact` builds the new artifact in one `atomic_dir`:

* the task half (`prefill/` for SUN, `decode/` for PrefillShare, `model/` for a monolithic
  `full` run) as an ordinary safetensors HF checkpoint with the tokenizer, cast back to the
  source artifact's dtype, with a fresh fingerprint. Under LoRA the task half holds the
  untouched base weights and `<half>-adapter/` holds a standard PEFT adapter dir
  (`adapter_config.json` + `adapter_model.safetensors`); the manifest's `adapter` field
  points at it and `load_artifact` merges it on load;
* the shared half, never rewritten: it is put into the store under its fingerprint (a
  no-op when it is already there) and hardlinked from there, or referenced by its store
  path where hardlinks are impossible. Its manifest entry is the source's, unchanged;
* `suntool.json` with the task entry's `trained_against` set to the shared half's
  fingerprint and a `training` block (method, data, steps, losses...), `finetune.yaml`
  (the config used) and `metrics.jsonl`.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suntool.manifest import MANIFEST_NAME, HalfEntry, Manifest

if TYPE_CHECKING:
    from suntool.artifact import ArtifactRef
    from suntool.train.methods import MethodSetup

CONFIG_NAME = "finetune.yaml"


def _save_half(model, tokenizer, dest: Path, dtype: str) -> None:
    from suntool.checkpoint import torch_dtype
    from suntool.split import save_checkpoint

    target = torch_dtype(dtype)
    if target != "auto":
        model = model.to(target)
    model.eval()
    save_checkpoint(model, tokenizer, dest)


def _point_adapter_at(config_path: Path, base_dir: Path) -> None:
    """Record the artifact's own base half as the adapter's base model (not the source's path)."""
    import json

    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base_dir)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_trained_artifact(
    out: Path,
    ref: ArtifactRef,
    setup: MethodSetup,
    tokenizer,
    *,
    training: dict[str, Any],
    config_yaml: dict[str, Any],
    metrics_file: Path | None,
    force: bool,
) -> Manifest:
    """Write the trained artifact to `out` (atomically) and return its manifest."""
    from suntool import __version__, store
    from suntool.atomic import atomic_dir
    from suntool.fingerprint import fingerprint_checkpoint
    from suntool.split import write_config_yaml

    source = ref.manifest
    dtype = source.dtype
    task = setup.task_half
    if setup.dropbp is not None:
        setup.dropbp.remove()
    with atomic_dir(Path(out), replace=force) as tmp:
        folder = "model" if task == "model" else task
        adapter = None
        if setup.lora:
            adapter = f"{folder}-adapter"
            setup.trainable.save_pretrained(tmp / adapter, safe_serialization=True)
            _point_adapter_at(tmp / adapter / "adapter_config.json", Path(out).resolve() / folder)
            base = setup.trainable.unload()
        else:
            base = setup.trainable
        _save_half(base, tokenizer, tmp / folder, dtype)
        fingerprint = fingerprint_checkpoint(tmp / folder)
        if task == "model":
            entry = HalfEntry(path=folder, role="task", sha256=fingerprint, adapter=adapter)
            manifest = replace(source, mode="monolithic", prefill=entry, decode=entry)
        else:
            shared_name = source.shared_half
            shared = source.half(shared_name)
            stored = store.put(ref.half_dir(shared_name), shared.sha256)
            path = shared_name if store.link_into(stored, tmp / shared_name) else str(stored.resolve())
            shared_entry = replace(shared, path=path)
            entry = HalfEntry(path=folder, role="task", sha256=fingerprint, adapter=adapter,
                              trained_against=shared.sha256)
            manifest = source.with_half(task, entry).with_half(shared_name, shared_entry)
        manifest = replace(manifest, training=training, created_by=f"suntool {__version__}")
        (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        write_config_yaml(tmp / CONFIG_NAME, config_yaml)
        if metrics_file is not None and metrics_file.is_file():
            shutil.copy2(metrics_file, tmp / metrics_file.name)
    return manifest
