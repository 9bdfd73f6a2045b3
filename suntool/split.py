"""`suntool split`: turn one HF checkpoint into a split prefill/decode artifact.

`split(SplitConfig(...))` loads the model (an HF dir or a built-in name), writes it once
as a normalised HF checkpoint (chosen dtype, tokenizer included), puts the shared half
into the store keyed by its fingerprint and links it into the artifact, copies the task
half, and writes `suntool.json` plus `split.yaml` (the config used). The artifact
directory appears in one atomic rename: an interrupted split leaves nothing that looks
complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from suntool.errors import SuntoolError
from suntool.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODES,
    BaseModelInfo,
    HalfEntry,
    HandoffSpec,
    Manifest,
    shared_half_of,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SplitConfig:
    model: str
    out: Path
    mode: str = "sun"
    dtype: str | None = None  # None keeps the checkpoint's own dtype
    first_token: str = "decode"
    force: bool = False
    store: Path | None = None
    trust_remote_code: bool = False

    def validate(self) -> None:
        if self.mode not in ("sun", "prefillshare", "monolithic"):
            raise SuntoolError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.first_token not in ("decode", "prefill"):
            raise SuntoolError(f"--first-token must be 'decode' or 'prefill', got {self.first_token!r}")
        out = Path(self.out)
        if out.exists() and not self.force:
            raise SuntoolError(f"{out} already exists; choose another -o or pass --force to replace it")
        if out.exists() and not out.is_dir():
            raise SuntoolError(f"{out} exists and is not a directory; remove it or choose another -o")


def save_checkpoint(model, tokenizer, dest: Path) -> None:
    """Write `model` and `tokenizer` as a standard safetensors HF checkpoint into `dest`."""
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def split(config: SplitConfig, progress: Progress | None = None) -> Manifest:
    """Write the artifact described by `config` and return its manifest."""
    from suntool import __version__, store
    from suntool.atomic import atomic_dir
    from suntool.checkpoint import inspect_checkpoint, load_model, load_tokenizer
    from suntool.fingerprint import fingerprint_checkpoint
    from suntool.models import resolve_model

    say = progress or (lambda _msg: None)
    config.validate()
    source = resolve_model(config.model, progress=say)
    info = inspect_checkpoint(source)
    if info.quantization:
        raise SuntoolError(f"{source} is already quantized; split the full-precision model, then `suntool quantize`")
    say(f"fingerprinting {source}")
    base_fingerprint = fingerprint_checkpoint(source)
    say(f"loading {info.architecture} from {source}")
    model = load_model(source, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    dtype = str(model.dtype).removeprefix("torch.")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-stage-", dir=out.parent))
    try:
        half_dir = staging / "half"
        say(f"writing the {dtype} checkpoint")
        save_checkpoint(model, tokenizer, half_dir)
        del model
        fingerprint = fingerprint_checkpoint(half_dir)
        shared = shared_half_of(config.mode)
        entries: dict[str, HalfEntry] = {}
        with atomic_dir(out, replace=config.force) as tmp:
            for name in ("prefill", "decode"):
                if name == shared:
                    say(f"storing the shared {name} half under {fingerprint[:19]}…")
                    stored = store.put(half_dir, fingerprint, config.store)
                    path = name if store.link_into(stored, tmp / name) else str(stored.resolve())
                    entries[name] = HalfEntry(path=path, role="shared", sha256=fingerprint)
                elif config.mode == "monolithic":  # one checkpoint plays both halves
                    if not (tmp / "model").exists():
                        shutil.copytree(half_dir, tmp / "model")
                    entries[name] = HalfEntry(path="model", role="task", sha256=fingerprint)
                else:
                    shutil.copytree(half_dir, tmp / name)
                    entries[name] = HalfEntry(path=name, role="task", sha256=fingerprint)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                mode=config.mode,
                base=BaseModelInfo(source=str(config.model), fingerprint=base_fingerprint),
                architecture=info.architecture,
                model_type=info.model_type,
                dtype=dtype,
                handoff=HandoffSpec(first_token=config.first_token),
                prefill=entries["prefill"],
                decode=entries["decode"],
                created_by=f"suntool {__version__}",
            )
            (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
            write_config_yaml(tmp / "split.yaml", asdict(config))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def write_config_yaml(path: Path, config: dict) -> None:
    """Save the config a command ran with beside its output (paths as strings)."""
    import yaml

    plain = {key: (str(value) if isinstance(value, Path) else value) for key, value in config.items()}
    path.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
