"""Affine-Scaled Attention (arXiv 2602.23057) for Llama-family models.

    out = α·softmax(QKᵀ/√d)·V + (α_ma − α)·mean(V over visible keys)

α = φ(W_a·x) per head per query token, φ(z) = clip(0.1·z + 0.5, 0, 1), and α_ma a buffer
holding a moving average (ρ = 0.9) of the batch-mean α per head, updated in training.
The mean over visible keys is computed by the very attention call that computes the
softmax term, with all-zero queries: uniform weights over exactly the keys the model
attends to (causal, padding, sliding window and KV cache included). So it runs on the
SDPA kernel plus one extra SDPA call, and is exact at conversion: `convert_to_affine`
initialises W_a = 0, bias = 5 (α = φ(5) = 1) and α_ma = 1, so the extra term vanishes and
logits are bit-identical to the original model's.

A converted model saves as an ordinary checkpoint with `suntool_attention: "affine"` in
config.json, each attention layer's `affine_alpha.{weight,bias}` and `alpha_ma` tensors;
`load_affine(model, path)` restores them after `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

from suntool.errors import SuntoolError

ATTENTION_NAME = "suntool_affine"
CONFIG_FLAG = "suntool_attention"
SUPPORTED = ("llama", "qwen2", "qwen3", "mistral", "phi3")
RHO = 0.9
INIT_BIAS = 5.0  # φ(5) = clip(0.5 + 0.5, 0, 1) = 1


def phi(z):
    """φ(z) = clip(0.1·z + 0.5, 0, 1)."""
    return (0.1 * z + 0.5).clamp(0.0, 1.0)


def _attention_layers(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return [layer.self_attn for layer in decoder.layers]


def _stash_input(module, args, kwargs):
    module._affine_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def affine_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """The attention interface registered as `suntool_affine` (wraps transformers' SDPA)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    x = module._affine_input
    module._affine_input = None
    alpha = phi(module.affine_alpha(x))  # [B, T, H]
    kwargs = {**kwargs, "dropout": 0.0}
    mean_v, _ = sdpa_attention_forward(module, torch.zeros_like(query), key, value, attention_mask, **kwargs)
    if module.training:
        with torch.no_grad():
            module.alpha_ma.mul_(RHO).add_((1 - RHO) * alpha.detach().float().mean(dim=(0, 1)))
    alpha = alpha.to(out.dtype)[..., None]  # out is [B, T, H, D]
    alpha_ma = module.alpha_ma.to(out.dtype)[:, None]
    return alpha * out + (alpha_ma - alpha) * mean_v, weights


def register_attention() -> None:
    """Register the attention function, and SDPA's mask format for it (it calls SDPA underneath)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, affine_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _attach(model) -> None:
    import torch
    from torch import nn

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = text.num_attention_heads
    reference = next(model.parameters())
    for attention in _attention_layers(model):
        if not hasattr(attention, "affine_alpha"):
            projection = nn.Linear(text.hidden_size, heads, bias=True, device=reference.device, dtype=reference.dtype)
            with torch.no_grad():
                projection.weight.zero_()
                projection.bias.fill_(INIT_BIAS)
            attention.affine_alpha = projection
            attention.register_buffer("alpha_ma", torch.ones(heads, device=reference.device, dtype=torch.float32))
            attention.register_forward_pre_hook(_stash_input, with_kwargs=True)
    register_attention()
    model.config._attn_implementation = ATTENTION_NAME
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and config is not model.config and hasattr(config, "_attn_implementation"):
            config._attn_implementation = ATTENTION_NAME
    setattr(model.config, CONFIG_FLAG, "affine")


def convert_to_affine(model):
    """Give every attention layer W_a and α_ma, initialised so the model is unchanged. In place."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED:
        raise SuntoolError(
            f"--attention affine supports {', '.join(SUPPORTED)} (Llama-family attention); this model is {model_type!r}"
        )
    _attach(model)
    return model


def is_affine(config) -> bool:
    value = config.get(CONFIG_FLAG) if isinstance(config, dict) else getattr(config, CONFIG_FLAG, None)
    return value == "affine"


def load_affine(model, path: Path):
    """Re-attach the affine modules to a model loaded by `from_pretrained` and load their tensors."""
    import torch
    from safetensors import safe_open

    _attach(model)
    wanted = {name for name, _ in model.named_parameters() if ".affine_alpha." in name}
    wanted |= {name for name, _ in model.named_buffers() if name.endswith(".alpha_ma")}
    found = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name in wanted:
                    found[name] = handle.get_tensor(name)
    missing = wanted - set(found)
    if missing:
        raise SuntoolError(
            f"{path}: config.json says {CONFIG_FLAG}=affine but {len(missing)} affine tensors are missing "
            f"(e.g. {sorted(missing)[0]}); the checkpoint is incomplete — re-run the fine-tune that wrote it"
        )
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in found.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return model
