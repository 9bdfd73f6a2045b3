"""The shape of a model for the roofline: layers, widths, heads, vocabulary, parameter counts.

`model_shape(spec)` accepts a known name (`Llama-3.1-8B`, `Qwen2.5-7B`, ... an org prefix
such as `meta-llama/` is ignored, case does not matter), a Hugging Face `config.json`
(or the directory holding it), or a suntool artifact (its prefill half's config). Nothing
is downloaded. Parameter counts are those of a dense decoder with a gated MLP (Llama,
Qwen, Mistral, Gemma, Phi-3); biases and norms are ignored (well under 1 %).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import SuntoolError


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @property
    def layer_params(self) -> int:
        """Weights of every decoder layer (attention projections and the gated MLP)."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.layer_params + self.head_params * (1 if self.tied else 2)

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


def _shape(name, layers, hidden, inter, heads, kv, head_dim, vocab, tied):
    return ModelShape(name, layers, hidden, inter, heads, kv, head_dim, vocab, tied)


KNOWN: dict[str, ModelShape] = {m.name.lower(): m for m in (
    _shape("Llama-3.1-8B", 32, 4096, 14336, 32, 8, 128, 128256, False),
    _shape("Llama-3.1-70B", 80, 8192, 28672, 64, 8, 128, 128256, False),
    _shape("Llama-3.2-1B", 16, 2048, 8192, 32, 8, 64, 128256, True),
    _shape("Llama-3.2-3B", 28, 3072, 8192, 24, 8, 128, 128256, True),
    _shape("Qwen2.5-0.5B", 24, 896, 4864, 14, 2, 64, 151936, True),
    _shape("Qwen2.5-1.5B", 28, 1536, 8960, 12, 2, 128, 151936, True),
    _shape("Qwen2.5-7B", 28, 3584, 18944, 28, 4, 128, 152064, False),
    _shape("Qwen2.5-14B", 48, 5120, 13824, 40, 8, 128, 152064, False),
    _shape("Qwen3-8B", 36, 4096, 12288, 32, 8, 128, 151936, False),
    _shape("Mistral-7B-v0.3", 32, 4096, 14336, 32, 8, 128, 32768, False),
    _shape("SmolLM2-135M", 30, 576, 1536, 9, 3, 64, 49152, True),
)}
ALIASES = {"llama-3-8b": "llama-3.1-8b", "llama-3.1-8b-instruct": "llama-3.1-8b", "meta-llama-3-8b": "llama-3.1-8b",
           "qwen2.5-7b-instruct": "qwen2.5-7b", "mistral-7b": "mistral-7b-v0.3",
           "smollm2-135m-instruct": "smollm2-135m"}


def shape_from_config(config: dict, name: str) -> ModelShape:
    """A `ModelShape` from an HF config dict (text config of a multimodal one)."""
    config = config.get("text_config") or config
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return ModelShape(
            name=name, layers=int(config["num_hidden_layers"]), hidden=hidden,
            intermediate=int(config["intermediate_size"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SuntoolError(f"{name}: the config lacks {err} needed for the roofline; pass a decoder LM's "
                           "config.json") from None


def model_shape(spec: str) -> ModelShape:
    """A known name, an HF config.json / checkpoint directory, or a suntool artifact."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and (path / "suntool.json").is_file():
            path = path / "prefill"
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise SuntoolError(f"{spec} holds no config.json; give a checkpoint directory, a config.json, "
                               "an artifact or a known model name")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise SuntoolError(f"{path} is not readable JSON: {err}") from None
        return shape_from_config(config, Path(spec).name or str(spec))
    key = spec.lower().rsplit("/", 1)[-1]
    key = ALIASES.get(key, key)
    if key in KNOWN:
        return KNOWN[key]
    known = ", ".join(m.name for m in KNOWN.values())
    raise SuntoolError(f"unknown model {spec!r}: give an HF config.json, a checkpoint or artifact directory, "
                       f"or one of {known}")
