"""`QuantLinear`, the runtime module of a GPTQ-quantized linear layer, and `load_quantized`.

`QuantLinear` holds the checkpoint tensors as buffers with the checkpoint's names (`qweight`,
`qzeros`, `scales`, `g_idx`, optional `bias`), so `model.state_dict()` of a quantized model is
exactly the GPTQ checkpoint. Its forward is `dequant_matmul(x, ...) (+ bias)`; nothing is cached.
`scales` stay fp16 even when the model is cast with `.to(dtype)` / `.half()` / `.bfloat16()`.

`dequant_matmul(x, qweight, qzeros, scales, g_idx, bits)` is the single dispatch point of the
quantized matmul: today the torch reference `dequant_matmul_ref` (dequantize in fp32, cast to
x.dtype, matmul); `set_dequant_matmul(fn)` installs another implementation (a Triton w4a16
kernel) with the same signature, `set_dequant_matmul(None)` restores the reference.

`load_quantized(path, dtype)` builds the architecture from `config.json` with transformers
(parameters on the meta device, so nothing is allocated twice), swaps every linear that has a
`.qweight` in the checkpoint for a `QuantLinear`, loads the safetensors files (never
`torch.load`) and returns the model in eval mode, ready for transformers' forward/generate. It
reads GPTQ checkpoints in the "gptq" (v1) and "gptq_v2" formats, from suntool or gptqmodel, and
needs neither gptqmodel nor optimum.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from suntool.errors import CheckpointError
from suntool.quant import packing

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DequantMatmul = Callable[..., torch.Tensor]


def dequant_matmul_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
) -> torch.Tensor:
    """x [..., in] @ dequantized weight [in, out] -> [..., out], in x.dtype (torch reference)."""
    weight = packing.dequantize(qweight, qzeros, scales, g_idx, bits, dtype=torch.float32)
    return torch.nn.functional.linear(x, weight.to(x.dtype))


_impl: DequantMatmul | None = None


def set_dequant_matmul(fn: DequantMatmul | None) -> None:
    """Route every `QuantLinear` forward through `fn` (same signature as `dequant_matmul_ref`)."""
    global _impl
    _impl = fn


def dequant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
) -> torch.Tensor:
    """The quantized matmul used by `QuantLinear`: the installed implementation, else the reference."""
    fn = _impl if _impl is not None else dequant_matmul_ref
    return fn(x, qweight, qzeros, scales, g_idx, bits)


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored in the GPTQ v1 layout (see `suntool.quant.packing`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        *,
        n_groups: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        packing.check_bits(bits)
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        if n_groups is None:
            n_groups = 1 if group_size == -1 else -(-in_features // group_size)
        self.register_buffer(
            "qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32, device=device)
        )
        self.register_buffer(
            "qzeros", torch.zeros(n_groups, out_features * bits // 32, dtype=torch.int32, device=device)
        )
        self.register_buffer(
            "scales", torch.zeros(n_groups, out_features, dtype=torch.float16, device=device)
        )
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_packed(
        cls, packed: packing.PackedGPTQ, bits: int, group_size: int, bias: torch.Tensor | None = None
    ) -> QuantLinear:
        """A QuantLinear holding `packed` (and a copy of `bias`, in its own dtype)."""
        module = cls(
            packed.in_features,
            packed.out_features,
            bits,
            group_size,
            bias=bias is not None,
            n_groups=int(packed.scales.shape[0]),
            device=packed.qweight.device,
            dtype=bias.dtype if bias is not None else torch.float32,
        )
        module.qweight = packed.qweight.clone()
        module.qzeros = packed.qzeros.clone()
        module.scales = packed.scales.clone()
        module.g_idx = packed.g_idx.clone()
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out, in] this layer multiplies by."""
        return packing.dequantize(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = dequant_matmul(x, self.qweight, self.qzeros, self.scales, self.g_idx, self.bits)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Keep scales fp16 through dtype casts (Module.to/half/bfloat16 only cast floating tensors):
        # view them as int16 while the cast runs, then view back. Moves between devices still apply.
        scales = self._buffers.get("scales")
        if scales is not None and scales.dtype == torch.float16:
            self._buffers["scales"] = scales.view(torch.int16)
            try:
                return super()._apply(fn, recurse)
            finally:
                self._buffers["scales"] = self._buffers["scales"].view(torch.float16)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


# --------------------------------------------------------------------------------------------
# Loading a GPTQ checkpoint


_QUANT_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


def read_quantization_config(path: Path) -> dict[str, Any]:
    """The `quantization_config` of the checkpoint at `path`, validated for this loader."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json; pass the directory of a quantized checkpoint")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    qcfg = config.get("quantization_config")
    if not isinstance(qcfg, dict) or str(qcfg.get("quant_method", "")).lower() != "gptq":
        raise CheckpointError(
            f"{config_file} has no `quantization_config` with quant_method 'gptq'; "
            "this is not a GPTQ checkpoint (load it with transformers directly)"
        )
    fmt = str(qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(
            f"{config_file}: checkpoint_format {fmt!r} is not supported; suntool reads 'gptq' and 'gptq_v2'"
        )
    bits = qcfg.get("bits")
    if bits not in packing.SUPPORTED_BITS:
        raise CheckpointError(f"{config_file}: quantization_config.bits={bits!r}; expected one of 2, 3, 4, 8")
    pack_dtype = str(qcfg.get("pack_dtype", "int32")).lower()
    if pack_dtype != "int32":
        raise CheckpointError(f"{config_file}: pack_dtype {pack_dtype!r} is not supported; expected int32")
    return qcfg


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({path / name for name in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise CheckpointError(
            f"{path} holds no complete set of *.safetensors weights"
            + (f" (missing {', '.join(m.name for m in missing)})" if missing else "")
        )
    return files


def _v2_to_v1_qzeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    zeros = packing.unpack_cols(qzeros, bits)  # v2 stores the zero-points themselves
    return packing.encode_qzeros(zeros, bits)


def load_quantized(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a GPTQ checkpoint directory as a transformers causal LM with `QuantLinear` layers.

    Non-quantized tensors (embeddings, norms, lm_head, biases) are cast to `dtype`; the packed
    tensors keep their checkpoint dtypes. The model is returned in eval mode on `device`.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    qcfg = read_quantization_config(path)
    bits = int(qcfg["bits"])
    group_size = int(qcfg.get("group_size", -1))
    v2 = str(qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq").lower() == "gptq_v2"

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # build the plain architecture; the swap below quantizes it
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)

    files = _safetensors_files(path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for key in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                state[key] = reader.get_tensor(key)

    quantized = sorted(key[: -len(".qweight")] for key in state if key.endswith(".qweight"))
    if not quantized:
        raise CheckpointError(f"{path} declares GPTQ quantization but holds no `.qweight` tensors")
    for name in quantized:
        missing = [name + s for s in _QUANT_SUFFIXES if name + s not in state]
        if missing:
            raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
        try:
            linear = model.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(
                f"{path}: tensor {name}.qweight names no module of the {type(model).__name__} architecture"
            ) from exc
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{path}: {name} is a {type(linear).__name__}, not a linear layer")
        qzeros = state[name + ".qzeros"]
        if v2:
            qzeros = _v2_to_v1_qzeros(qzeros, bits)
            state[name + ".qzeros"] = qzeros
        qlinear = QuantLinear(
            linear.in_features,
            linear.out_features,
            bits,
            group_size,
            bias=linear.bias is not None,
            n_groups=int(state[name + ".scales"].shape[0]),
            device="meta",
            dtype=dtype,
        )
        for suffix in _QUANT_SUFFIXES:
            expected = getattr(qlinear, suffix[1:]).shape
            if state[name + suffix].shape != expected:
                raise CheckpointError(
                    f"{path}: {name}{suffix} has shape {tuple(state[name + suffix].shape)}, expected "
                    f"{tuple(expected)} for a {linear.in_features}->{linear.out_features} layer "
                    f"at {bits} bits"
                )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, qlinear)

    for key, tensor in state.items():
        if tensor.is_floating_point() and not key.endswith(".scales"):
            state[key] = tensor.to(dtype)
        elif key.endswith(".scales"):
            state[key] = tensor.to(torch.float16)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise CheckpointError(
            f"{path} holds tensors the {type(model).__name__} architecture has no place for: "
            f"{', '.join(result.unexpected_keys[:5])}"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{path} is missing tensors: {', '.join(still_meta[:5])}")
    model.config.quantization_config = qcfg
    model.to(device)
    model.eval()
    return model


def quantized_linear_names(model: nn.Module) -> list[str]:
    """Names of the `QuantLinear` modules of `model`."""
    return [name for name, module in model.named_modules() if isinstance(module, QuantLinear)]
