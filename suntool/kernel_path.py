"""Route a loaded HF causal LM through suntool's kernel dispatchers: `enable_kernels(model)`.

    model = enable_kernels(load_model(path))      # in place, idempotent; returns the model
    enable_kernels(other, strict=False)           # leaves a model it cannot route exactly untouched
    kernels_enabled(model)                        # True
    disable_kernels(model)                        # back to the plain transformers forward

Supported: llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text (`SUPPORTED`). What it routes:

- **RMSNorm**: every `*RMSNorm` module (Qwen3's and Gemma-3's q_norm/k_norm included) gets a
  forward calling `suntool.kernels.rmsnorm.rmsnorm(x, weight, eps, offset)`. The offset (0 for
  Llama-style `w * x̂`, 1 for Gemma's `(1 + w) * x̂`) is found per module by checking the kernel's
  reference against the module's own forward on a random fp32 input: they must agree bit for bit,
  otherwise `enable_kernels` refuses the model (unknown RMSNorm numerics).
- **Rotary**: the attention modules call their modeling file's module-level `apply_rotary_pos_emb`
  (transformers 5.24 has no per-module rotary hook: `use_kernelized_func` is a no-op without the
  hub `kernels` package, and the forwards call the module global, not an attribute). That global is
  replaced, once per modeling file, by a router that calls `suntool.kernels.rotary.apply_rotary`
  only while an enabled attention module is running (a context variable set by forward hooks on
  those modules) and the original function otherwise, so models that were not enabled keep HF's
  exact code under every backend. Before routing, the reference is checked bit-exact against the
  original on the model's rotary sizes (partial rotary included).
- **Attention**: the model's attention implementation (`sdpa` or `eager`; Gemma-2 is eager for its
  logit soft-capping) is replaced by a registered one, `suntool_kernels_sdpa` or
  `suntool_kernels_eager`, whose mask format is the original's (registered with
  `AttentionMaskInterface`). Prefill and training (more than one query token, `module.training`, or
  `output_attentions`) call the original implementation unchanged. A decode step (one query token)
  calls `suntool.kernels.paged_attention.paged_attention` over the HF cache viewed as a paged cache:
  the layer's dense keys `[B, Hkv, L, D]` transposed to `[B, L, Hkv, D]` are B blocks of L tokens
  (block table `arange(B)`, every `seq_len` L), and the 4-D mask's visible positions become one
  window per row (each row's last `n` visible positions: left padding and sliding windows, the
  trimmed sliding-window cache layers of transformers included). A mask whose visible positions are
  not a suffix of the row is read through a token-granular view instead (block size 1, one block
  table entry per visible position). Nothing is copied in the common case. Soft-capping goes to
  `softcap`, the model's `scaling` to `scale`.
- **Quantized linears**: `suntool.quant.qlinear.QuantLinear` modules with 4-bit weights get a
  forward calling `suntool.kernels.w4a16.w4a16_matmul` (same GPTQ v1 packing and zero convention as
  `suntool.quant.packing`; tests check it). Exception: bf16 activations on the CPU, with no gradient
  needed, `SUNTOOL_KERNELS` other than `ref` and Triton's interpreter off, go through
  `suntool.kernels.w4a16_cpu` (PyTorch's int4 CPU kernel, bf16 rounding of the scales and zeros) when its
  pack applies: built on the first such call and kept in the module's `__dict__` (remade when a buffer is
  replaced or modified in place; "does not apply" is kept too); `disable_kernels` drops it.
  `keep_only_cpu_int4_packs(model)` builds the packs up front and frees the GPTQ buffers (inference-only bf16
  CPU models: `load_artifact` and the serving engine call it), halving the 4-bit weight bytes held.

The backend of every call is chosen by `suntool.kernels.dispatch` (`SUNTOOL_KERNELS=ref|triton|auto`,
read per call): on CPU the references run, and greedy outputs equal HF `generate`. Everything is per
module instance, so other models in the process are untouched; `enable_kernels` raises
`SuntoolError` for an architecture or attention implementation it cannot route exactly.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import types
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError
from suntool.kernels import paged_attention as _paged  # kernel modules import neither torch nor triton
from suntool.kernels import rmsnorm as _rmsnorm
from suntool.kernels import rotary as _rotary
from suntool.kernels import w4a16 as _w4a16
from suntool.kernels import w4a16_cpu as _w4a16_cpu

if TYPE_CHECKING:
    import torch

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text")
ATTENTION_NAMES = {"sdpa": "suntool_kernels_sdpa", "eager": "suntool_kernels_eager"}
_STATE_ATTR = "_suntool_kernels_from"  # on the model: the attention implementation it had before
_NORM_ATTR = "_suntool_rmsnorm"  # on each RMSNorm: (eps, offset)
_ROUTER_ATTR = "_suntool_original"  # on a routed apply_rotary_pos_emb: the function it replaced
_CPU_INT4_ATTR = "_suntool_cpu_int4"  # on each QuantLinear: (buffer stamp, CpuInt4Pack or None)
_PACK_ONLY_ATTR = "_suntool_pack_only"  # True once keep_only_cpu_int4_packs freed its GPTQ buffers

_IN_ENABLED_ATTENTION = contextvars.ContextVar("suntool_in_enabled_attention", default=False)


# --------------------------------------------------------------------------------------------
# Public API


def kernels_enabled(model) -> bool:
    """True when `enable_kernels` has been applied to `model` (and not undone)."""
    return getattr(model, _STATE_ATTR, None) is not None


def enable_kernels(model, *, strict: bool = True):
    """Route `model`'s norms, rotary, decode attention and 4-bit linears through the kernel dispatchers.

    In place and idempotent; returns `model`. For an unsupported architecture or attention
    implementation, or modules whose numerics the kernels do not reproduce, raises `SuntoolError`
    before changing anything; with `strict=False` it leaves such a model untouched instead (check
    `kernels_enabled`), which is what a loader serving any checkpoint wants.
    """
    if kernels_enabled(model):
        return model
    if not strict:
        try:
            return enable_kernels(model)
        except SuntoolError:
            return model
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise SuntoolError(
            f"the kernels path supports {', '.join(SUPPORTED)}; this model is {model_type!r}. "
            "Run it without kernels (do not call enable_kernels)."
        )
    original = model.config._attn_implementation
    if original not in ATTENTION_NAMES:
        raise SuntoolError(
            f"the kernels path routes models whose attention implementation is 'sdpa' or 'eager'; this one uses "
            f"{original!r}. Load it with attn_implementation='sdpa' (or 'eager') to use the kernels."
        )
    attentions = _attention_modules(model)
    norms = [(module, _rmsnorm_convention(module)) for module in model.modules() if _is_rmsnorm(module)]
    modeling_modules = {sys.modules[type(attention).__module__] for attention in attentions}
    for modeling in modeling_modules:
        _check_rotary(modeling, config)

    for module, convention in norms:
        setattr(module, _NORM_ATTR, convention)
        module.forward = types.MethodType(_rmsnorm_forward, module)
    for modeling in modeling_modules:
        _route_rotary(modeling)
    for attention in attentions:
        attention.register_forward_pre_hook(_enter_attention)
        attention.register_forward_hook(_leave_attention, always_call=True)
    _quant_linears(model, enable=True)
    register_attention()
    _set_attention(model, ATTENTION_NAMES[original])
    setattr(model, _STATE_ATTR, original)
    return model


def disable_kernels(model):
    """Undo `enable_kernels` on `model` (in place; a no-op if it was not enabled). Returns `model`."""
    original = getattr(model, _STATE_ATTR, None)
    if original is None:
        return model
    if any(module.__dict__.get(_PACK_ONLY_ATTR) for module in model.modules()):
        raise SuntoolError(
            "this model's 4-bit linears keep only their CPU int4 packs (keep_only_cpu_int4_packs freed their "
            "GPTQ weights), so they cannot leave the kernels path: reload the model instead"
        )
    for module in model.modules():
        if _NORM_ATTR in module.__dict__:
            del module.__dict__[_NORM_ATTR]
            module.__dict__.pop("forward", None)
        for hooks, hook in ((module._forward_pre_hooks, _enter_attention), (module._forward_hooks, _leave_attention)):
            for key in [key for key, value in hooks.items() if value is hook]:
                del hooks[key]
                getattr(module, "_forward_hooks_always_called", {}).pop(key, None)
    _quant_linears(model, enable=False)
    _set_attention(model, original)
    delattr(model, _STATE_ATTR)
    return model


def register_attention() -> None:
    """Register the kernel attention functions and, for each, its original's mask format (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(ATTENTION_NAMES["sdpa"], kernel_attention_sdpa)
    AttentionMaskInterface.register(ATTENTION_NAMES["sdpa"], sdpa_mask)
    AttentionInterface.register(ATTENTION_NAMES["eager"], kernel_attention_eager)
    AttentionMaskInterface.register(ATTENTION_NAMES["eager"], eager_mask)


# --------------------------------------------------------------------------------------------
# RMSNorm


def _is_rmsnorm(module) -> bool:
    return type(module).__name__.endswith("RMSNorm")


def _norm_eps(module) -> float:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float | int):
            return float(value)
    raise SuntoolError(f"{type(module).__name__} has no `variance_epsilon` or `eps`; the kernels path cannot route it")


def _rmsnorm_convention(module) -> tuple[float, float]:
    """(eps, offset) such that the kernel reference reproduces `module`'s own forward bit for bit."""
    import torch

    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise SuntoolError(f"{type(module).__name__} has no 1-D weight; the kernels path cannot route it")
    eps = _norm_eps(module)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, weight.shape[0], generator=generator).to(weight.device)
    with torch.no_grad():
        expected = type(module).forward(module, x)
        for offset in (0.0, 1.0):
            if torch.equal(_rmsnorm.rmsnorm_ref(x, weight, eps, offset), expected):
                return eps, offset
    raise SuntoolError(
        f"{type(module).__name__}'s forward is neither `w * rmsnorm(x)` nor `(1 + w) * rmsnorm(x)` computed "
        "as the rmsnorm kernel does; the kernels path cannot route this model"
    )


def _rmsnorm_forward(self, hidden_states):
    eps, offset = getattr(self, _NORM_ATTR)
    return _rmsnorm.rmsnorm(hidden_states, self.weight, eps, offset)


# --------------------------------------------------------------------------------------------
# Rotary


def _enter_attention(_module, _args) -> None:
    _IN_ENABLED_ATTENTION.set(True)


def _leave_attention(_module, _args, _output) -> None:
    _IN_ENABLED_ATTENTION.set(False)


def _original_rotary(modeling):
    function = getattr(modeling, "apply_rotary_pos_emb", None)
    if function is None:
        raise SuntoolError(f"{modeling.__name__} has no apply_rotary_pos_emb; the kernels path cannot route it")
    return getattr(function, _ROUTER_ATTR, function)


def _check_rotary(modeling, config) -> None:
    """The kernel reference must equal the modeling file's rotary bit for bit on this model's sizes."""
    import torch

    original = _original_rotary(modeling)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    rot_dim = int(head_dim * factor)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, head_dim, generator=generator)
    k = torch.randn(2, 1, 5, head_dim, generator=generator)
    angles = torch.randn(2, 5, rot_dim // 2, generator=generator)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    theirs, ours = original(q, k, cos, sin), _rotary.apply_rotary_ref(q, k, cos, sin)
    if not all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True)):
        raise SuntoolError(
            f"{modeling.__name__}.apply_rotary_pos_emb is not the rotate_half convention the rotary kernel "
            "implements; the kernels path cannot route this model"
        )


def _route_rotary(modeling) -> None:
    """Replace `modeling.apply_rotary_pos_emb` by a router (idempotent; see the module docstring)."""
    current = modeling.apply_rotary_pos_emb
    if getattr(current, _ROUTER_ATTR, None) is not None:
        return
    original = current

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if _IN_ENABLED_ATTENTION.get():
            return _rotary.apply_rotary(q, k, cos, sin, unsqueeze_dim)
        return original(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.__doc__ = (
        f"suntool router: `suntool.kernels.rotary.apply_rotary` inside attention modules of models passed to "
        f"`suntool.kernel_path.enable_kernels`, else the original {modeling.__name__}.apply_rotary_pos_emb."
    )
    setattr(apply_rotary_pos_emb, _ROUTER_ATTR, original)
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb


# --------------------------------------------------------------------------------------------
# Attention


def _attention_modules(model) -> list:
    found = [
        module
        for module in model.modules()
        if type(module).__name__.endswith("Attention") and hasattr(module, "layer_idx") and hasattr(module, "scaling")
    ]
    if not found:
        raise SuntoolError(f"{type(model).__name__} has no attention modules the kernels path recognises")
    return found


def _set_attention(model, name: str) -> None:
    model.config._attn_implementation = name
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and config is not model.config and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


def kernel_attention_sdpa(module, query, key, value, attention_mask, **kwargs):
    """`suntool_kernels_sdpa`: paged decode attention for one query token, transformers' SDPA otherwise."""
    out = _decode_attention(module, query, key, value, attention_mask, kwargs)
    if out is not None:
        return out, None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def kernel_attention_eager(module, query, key, value, attention_mask, **kwargs):
    """`suntool_kernels_eager`: paged decode attention for one query token, the modeling file's eager otherwise."""
    out = _decode_attention(module, query, key, value, attention_mask, kwargs)
    if out is not None:
        return out, None
    return sys.modules[type(module).__module__].eager_attention_forward(
        module, query, key, value, attention_mask, **kwargs
    )


@dataclass(frozen=True)
class _DecodePlan:
    """How one decode step's mask maps onto `paged_attention` arguments (shared by every layer using it)."""

    suffix: bool  # visible positions are each row's last `visible` ones: the dense [B, L, Hkv, D] view
    seq_lens: torch.Tensor  # [B] int32
    tables: torch.Tensor  # [B, n] int32: arange(B) (suffix) or visible positions within the row (token view)
    window: torch.Tensor | None  # [B] int32 per-row window (suffix plans only), None when all is visible


_plans = threading.local()


def _decode_plan(mask, batch: int, length: int, device) -> _DecodePlan | None:
    """The plan for `mask` (memoised per mask tensor and thread: every layer of a step shares it)."""
    memo = getattr(_plans, "memo", None)
    if memo is None:
        memo = _plans.memo = {}
    key = (id(mask), batch, length, device)
    hit = memo.get(key)
    if hit is not None and (hit[0] is None or hit[0]() is mask):
        return hit[1]
    plan = _build_plan(mask, batch, length, device)
    if len(memo) > 32:
        memo.clear()
    memo[key] = (None if mask is None else weakref.ref(mask), plan)
    return plan


def _build_plan(mask, batch: int, length: int, device) -> _DecodePlan | None:
    import torch

    full = torch.full((batch,), length, dtype=torch.int32, device=device)
    if mask is None:  # transformers skips the mask when every key is visible
        return _DecodePlan(True, full, torch.arange(batch, dtype=torch.int32, device=device)[:, None], None)
    if mask.dim() != 4 or mask.shape[-1] != length or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        return None
    last = mask[:, 0, -1, :].expand(batch, length)
    if last.dtype == torch.bool:
        visible = last
    else:  # eager's additive mask: 0 where visible, the dtype's minimum elsewhere; anything else is a bias
        visible = last == 0
        if not bool((visible | (last == torch.finfo(last.dtype).min)).all()):
            return None
    counts = visible.sum(dim=-1)
    if bool((counts == 0).any()):
        return None
    positions = torch.arange(length, device=device)
    suffix = positions[None, :] >= (length - counts)[:, None]
    if torch.equal(visible, suffix):
        window = None if bool((counts == length).all()) else counts.to(torch.int32)
        return _DecodePlan(True, full, torch.arange(batch, dtype=torch.int32, device=device)[:, None], window)
    order = torch.sort(visible.to(torch.int8), dim=-1, descending=True, stable=True).indices
    tables = order[:, : int(counts.max())].to(torch.int32)
    return _DecodePlan(False, counts.to(torch.int32), tables, None)


def _token_view(states):
    """[B, H, L, D] -> [B*H*L - (H-1)*L, 1, H, D]: block `b*H*L + t` is token t of row b (no copy)."""
    b, h, length, d = states.shape
    states = states.contiguous()
    return states.as_strided((b * h * length - (h - 1) * length, 1, h, d), (d, d, length * d, 1))


def _decode_attention(module, query, key, value, attention_mask, kwargs: dict[str, Any]):
    """`[B, 1, Hq, D]` through paged_attention for a decode step, or None to run the original."""
    if query.shape[2] != 1 or module.training or kwargs.get("output_attentions") or key.shape[2] == 0:
        return None
    batch, _, length, _ = key.shape
    plan = _decode_plan(attention_mask, batch, length, query.device)
    if plan is None:
        return None
    if plan.suffix:
        k_cache, v_cache, tables = key.transpose(1, 2), value.transpose(1, 2), plan.tables
    else:
        k_cache, v_cache = _token_view(key), _token_view(value)
        import torch

        base = torch.arange(batch, device=query.device, dtype=torch.int32)[:, None] * (key.shape[1] * length)
        tables = plan.tables + base
    out = _paged.paged_attention(
        query.select(2, 0),
        k_cache,
        v_cache,
        tables,
        plan.seq_lens,
        kwargs.get("scaling"),
        sliding_window=plan.window,
        softcap=kwargs.get("softcap"),
        validate=False,
    )
    return out.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# Quantized linears


def _quant_linears(model, *, enable: bool) -> None:
    quant = sys.modules.get("suntool.quant.qlinear")
    if quant is None:  # nothing can hold a QuantLinear unless that module was imported
        return
    for module in model.modules():
        if isinstance(module, quant.QuantLinear) and module.bits == 4:
            if enable:
                module.forward = types.MethodType(_quant_linear_forward, module)
            else:
                module.__dict__.pop("forward", None)
                module.__dict__.pop(_CPU_INT4_ATTR, None)


def keep_only_cpu_int4_packs(model) -> int:
    """Free the GPTQ buffers of every 4-bit linear that the CPU int4 op will run; returns bytes freed.

    For inference-only models on the CPU in bf16 with the kernels enabled (what `load_artifact` and the
    serving engine load): such a linear runs from its `CpuInt4Pack`, a lossless repack of ``qweight``,
    so keeping both doubles the 4-bit weight bytes. Built here (not on the first call), the packs
    replace the GPTQ buffers (``qweight``, ``qzeros``, ``scales``, ``g_idx``: empty tensors afterwards;
    the pack holds the scales and zeros in bf16). Returns the bytes of the buffers freed.
    When anything was freed the model is inference-only afterwards: its parameters are frozen
    (``requires_grad_(False)``), those linears accept only bf16 CPU inputs without gradient and raise
    `SuntoolError` otherwise, and `disable_kernels` refuses the model. Does nothing (returns 0) for a model that is not
    bf16 on the CPU with kernels enabled, under ``SUNTOOL_KERNELS=ref`` or Triton's interpreter, or
    where the op is missing, or (nothing freed) with no 4-bit linear the op can read; linears it cannot
    read (act-order ``g_idx``...) keep their GPTQ buffers and the reference path.
    """
    import torch

    from suntool.kernels.dispatch import interpreting, requested_mode

    quant = sys.modules.get("suntool.quant.qlinear")
    if quant is None or not kernels_enabled(model) or requested_mode() == "ref" or interpreting():
        return 0
    if not _w4a16_cpu.available():
        return 0
    floats = [p for p in model.parameters() if p.is_floating_point()]
    if not floats or any(p.dtype != torch.bfloat16 or p.device.type != "cpu" for p in floats):
        return 0
    freed = 0
    for module in model.modules():
        if not (isinstance(module, quant.QuantLinear) and "forward" in module.__dict__):
            continue
        if module.__dict__.get(_PACK_ONLY_ATTR):
            continue
        pack = _cpu_int4_pack(module)
        if pack is None:
            continue
        for name in ("qweight", "qzeros", "scales", "g_idx"):  # all in the pack (scales/zeros as bf16)
            tensor = getattr(module, name)
            freed += tensor.nbytes
            setattr(module, name, torch.empty(0, dtype=tensor.dtype))
        module.__dict__[_PACK_ONLY_ATTR] = True  # its forward reads the cached pack, never re-stamps it
    if freed:
        model.requires_grad_(False)
    return freed


def _quant_linear_forward(self, x):
    import torch

    from suntool.kernels.dispatch import interpreting, needs_grad, requested_mode

    fast_input = x.dtype == torch.bfloat16 and x.device.type == "cpu" and not needs_grad(x, self.bias)
    if self.__dict__.get(_PACK_ONLY_ATTR):
        cached = self.__dict__.get(_CPU_INT4_ATTR)
        if not fast_input or cached is None or cached[1] is None:
            raise SuntoolError(
                f"this 4-bit linear ({self.in_features}->{self.out_features}) keeps only its CPU int4 pack "
                f"(loaded for bf16 inference on the CPU), so it runs bf16 CPU inputs without gradient; got "
                f"{x.dtype} on {x.device.type}{' with gradient' if needs_grad(x, self.bias) else ''}. "
                "Reload the model for other uses (SUNTOOL_KERNELS=ref keeps the GPTQ weights)."
            )
        return _w4a16_cpu.w4a16_matmul_cpu(x, cached[1], self.bias)
    if fast_input and requested_mode() != "ref" and not interpreting():
        pack = _cpu_int4_pack(self)
        if pack is not None:
            return _w4a16_cpu.w4a16_matmul_cpu(x, pack, self.bias)
    return _w4a16.w4a16_matmul(x, self.qweight, self.qzeros, self.scales, self.g_idx, self.bias)


def _version(tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors have no version counter (and cannot change outside inference mode)
        return None


def _cpu_int4_pack(module):
    """The module's `CpuInt4Pack` (None: the CPU op does not apply), made once per state of its buffers.

    The stamp holds weak references, so buffers replaced by `.to()` are not kept alive by it.
    """
    buffers = (module.qweight, module.qzeros, module.scales, module.g_idx)
    cached = module.__dict__.get(_CPU_INT4_ATTR)
    if cached is not None:
        stamp, pack = cached
        if all(ref() is t and _version(t) == version for t, (ref, version) in zip(buffers, stamp, strict=True)):
            return pack
    pack = _w4a16_cpu.pack_for_cpu(*buffers)
    module.__dict__[_CPU_INT4_ATTR] = (tuple((weakref.ref(t), _version(t)) for t in buffers), pack)
    return pack
