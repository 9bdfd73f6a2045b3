"""Validation of Hugging Face checkpoint directories before anything loads them.

`inspect_checkpoint(path)` checks, without torch, that `path` is a directory with a
readable `config.json` naming a supported architecture and intact `*.safetensors` files,
and returns a `CheckpointInfo`. Every failure is a `CheckpointError` that names the path
and says what to do. `load_model` / `load_tokenizer` wrap transformers with those checks,
`trust_remote_code` off unless asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import CheckpointError

# model_type -> the causal-LM class transformers builds for it. The handoff is tested
# against `generate` for every entry (tests/test_handoff.py).
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_type: str
    config: dict

    @property
    def architecture(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.model_type]

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size")

    @property
    def quantization(self) -> dict | None:
        return self.config.get("quantization_config")


def read_config(path: Path) -> dict:
    """The parsed `config.json` of a checkpoint dir, or a `CheckpointError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; pass a Hugging Face checkpoint directory or a built-in model name"
        )
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass a Hugging Face checkpoint directory")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path} has no config.json, so it is not a Hugging Face checkpoint; "
            "pass the directory that save_pretrained wrote"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err}); restore or re-save the checkpoint") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    return config


def inspect_checkpoint(path: Path, *, check_tensors: bool = True) -> CheckpointInfo:
    """Validate a checkpoint dir (config, architecture, safetensors headers) and describe it."""
    from suntool.fingerprint import checkpoint_tensors

    path = Path(path)
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())
        raise CheckpointError(
            f"{path / 'config.json'}: model_type {model_type!r} is not supported; supported: {supported}"
        )
    if check_tensors:
        if any(path.glob("*.bin")) and not any(path.glob("*.safetensors")):
            raise CheckpointError(
                f"{path} holds only pickle (*.bin) weights; suntool reads safetensors only. "
                "Convert with: AutoModelForCausalLM.from_pretrained(path).save_pretrained(path)"
            )
        checkpoint_tensors(path)  # raises on a truncated/corrupt file
    return CheckpointInfo(path=path, model_type=model_type, config=config)


def torch_dtype(name: str | None):
    """Map 'bfloat16'/'float32'/'float16'/'auto'/None to a torch dtype (or 'auto')."""
    import torch

    if name in (None, "auto"):
        return "auto"
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if name not in table:
        raise CheckpointError(f"unknown dtype {name!r}; use one of bfloat16, float16, float32")
    return table[name]


def load_model(path: Path, *, dtype: str | None = None, device: str = "cpu", trust_remote_code: bool = False):
    """Load a validated checkpoint as an eval-mode causal LM (GPTQ checkpoints through suntool.quant)."""
    from transformers import AutoModelForCausalLM

    info = inspect_checkpoint(path)
    quant = info.quantization
    if quant and quant.get("quant_method") == "gptq":
        from suntool.quant.qlinear import load_quantized

        model = load_quantized(path, dtype=torch_dtype(dtype or "float32"))
        return model.to(device).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, device_map=None
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: transformers could not load the checkpoint: {err}") from err
    from suntool.affine_attention import is_affine, load_affine

    if is_affine(info.config):
        load_affine(model, path)
    return model.to(device).eval()


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, left-padding, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: no usable tokenizer ({err}); save one beside the model") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
