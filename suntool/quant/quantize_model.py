"""Quantize a causal LM's decoder layers to GPTQ and save it as an ordinary GPTQ checkpoint.

`quantize_model(model, calib_batches, bits=4, group_size=128, method="gptq")` replaces every
`nn.Linear` inside the decoder layers by a `QuantLinear`, in place, and returns a
`QuantizeReport`. Embeddings, norms and lm_head stay in full precision. With GPTQ it works layer
by layer, as the GPTQ reference does: the calibration batches are run up to decoder layer 0 and
its inputs captured; for each layer, the inputs of its linears are folded into one Hessian per
linear (forward hooks, no activations kept), the linears are quantized, and the *quantized*
layer's outputs become the next layer's inputs. With `true_sequential` (default, as gptqmodel)
the linears of a layer are quantized in groups that share an input (q/k/v, then o, then
gate/up, then down), each group calibrated on the outputs of the already-quantized ones; a
calibration pass stops at the group's last linear, and quantized linears are stood in for by
dense nn.Linear with their dequantized weight (the same numbers) until the layer is done.
`method="rtn"` rounds to nearest and needs no calibration.

`lm_head=True` quantizes the output projection too (gptqmodel's `lm_head: true` layout: the
checkpoint holds `lm_head.qweight/qzeros/scales/g_idx`). A tied lm_head is untied first: the
input embedding keeps the full-precision weight (a lookup table, never quantized) and the
config says `tie_word_embeddings: false`. Under GPTQ its Hessian comes from the final norm's
outputs over the calibration data, with every decoder layer already quantized.

`save_quantized(model, out_dir, config)` writes the model as a standard HF checkpoint, atomically
(`suntool.atomic.atomic_dir`): `model.safetensors` with tensors named like gptqmodel's
(`model.layers.N.self_attn.q_proj.qweight` / `.qzeros` / `.scales` / `.g_idx` / `.bias`),
`config.json` whose `quantization_config` carries the keys gptqmodel 7.x and transformers'
`GPTQConfig` read (quant_method "gptq", checkpoint_format "gptq" = v1, bits, group_size,
desc_act, sym, ...), the same block as `quantize_config.json` for older readers, and
`generation_config.json`. `suntool.quant.qlinear.load_quantized` reads it back; so do
transformers + gptqmodel and vLLM.

User errors (bits, group_size, an already-quantized model, bad calibration data) raise
SuntoolError before any layer is touched. Nothing is printed: pass `progress(step, total, text)`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError
from suntool.quant.packing import SUPPORTED_BITS, check_bits, pack_multiple

if TYPE_CHECKING:
    import torch
    from torch import nn

Progress = Callable[[int, int, str], None]
METHODS = ("gptq", "rtn")


@dataclass(frozen=True)
class QuantConfig:
    """How a model was (or is to be) quantized."""

    bits: int = 4
    group_size: int = 128
    method: str = "gptq"  # "gptq" | "rtn"
    desc_act: bool = False
    sym: bool = False
    damp_percent: float = 0.01
    true_sequential: bool = True
    block_size: int = 128
    lm_head: bool = False  # quantize the output projection too (untied first if tied)

    def validate(self) -> None:
        """Raise SuntoolError on a setting no layer could be quantized with."""
        check_bits(self.bits)
        if self.method not in METHODS:
            raise SuntoolError(f"method={self.method!r} is not supported; use one of {METHODS}")
        if self.group_size != -1 and self.group_size <= 0:
            raise SuntoolError(
                f"group_size must be positive or -1 (one group per row), got {self.group_size}"
            )
        if self.desc_act and self.method != "gptq":
            raise SuntoolError("desc_act (act-order) applies to GPTQ only; drop it or use method='gptq'")
        if not 0 < self.damp_percent < 1:
            raise SuntoolError(f"damp_percent must lie in (0, 1), got {self.damp_percent}")
        if self.block_size <= 0:
            raise SuntoolError(f"block_size must be positive, got {self.block_size}")

    def to_quantization_config(self) -> dict[str, Any]:
        """The `quantization_config` block of config.json, with the keys gptqmodel 7.x writes."""
        from suntool import __version__

        return {
            "quant_method": "gptq",
            "method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size,
            "desc_act": self.desc_act,
            "sym": self.sym,
            "lm_head": self.lm_head,
            "format": "gptq",
            "checkpoint_format": "gptq",
            "pack_dtype": "int32",
            "meta": {
                "quantizer": [f"suntool:{__version__}"],
                "suntool_method": self.method,
                "damp_percent": self.damp_percent,
                "true_sequential": self.true_sequential,
                "static_groups": False,
                "block_size": self.block_size,
            },
        }


@dataclass(frozen=True)
class LayerReport:
    """What quantizing one linear layer did."""

    name: str
    in_features: int
    out_features: int
    method: str  # "gptq", or "rtn" (asked for, or because the calibration never reached the layer)
    rel_weight_error: float  # ||W - Ŵ||_F / ||W||_F
    gptq_loss: float | None = None  # GPTQ's own estimate of the output error
    damp: float | None = None
    dead_inputs: int = 0
    calib_rows: int = 0


@dataclass(frozen=True)
class QuantizeReport:
    """The result of `quantize_model`."""

    config: QuantConfig
    layers: tuple[LayerReport, ...] = field(default_factory=tuple)
    calib_batches: int = 0
    calib_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Finding the parts of a model


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers (`model.layers` for Llama-like models) and its name."""
    from torch import nn

    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            same_type = len({type(m) for m in module}) == 1
            if same_type and (n_layers is None or len(module) == n_layers):
                candidates.append((name, module))
    preferred = [c for c in candidates if c[0].rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    chosen = preferred or candidates
    if not chosen:
        raise SuntoolError(
            f"cannot find the decoder layers of {type(model).__name__}: expected a ModuleList of "
            f"{n_layers} identical layers (like model.layers); this architecture is not supported"
        )
    return min(chosen, key=lambda c: c[0].count("."))


def _linears(layer: nn.Module) -> list[tuple[str, nn.Linear]]:
    from torch import nn

    return [(name, m) for name, m in layer.named_modules() if isinstance(m, nn.Linear)]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` already holds quantized layers or declares a quantization_config."""
    from suntool.quant.qlinear import QuantLinear

    if getattr(getattr(model, "config", None), "quantization_config", None):
        return True
    return any(isinstance(m, QuantLinear) for m in model.modules())


def output_projection(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the model's lm_head; SuntoolError if it is not a plain linear layer."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise SuntoolError(
            f"{type(model).__name__} has no linear lm_head to quantize (found {type(head).__name__}); "
            "drop --quantize-lm-head"
        )
    name = next(n for n, m in model.named_modules() if m is head)
    return name, head


def is_tied(model: nn.Module) -> bool:
    """Whether the lm_head shares its weight with the input embedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and embeddings is not None and head.weight is embeddings.weight


def untie_lm_head(model: nn.Module) -> bool:
    """Give a tied lm_head its own copy of the weight and mark the config untied; returns whether it was tied.

    The input embedding keeps the original parameter, so the model computes exactly what it did.
    """
    from torch import nn

    if not is_tied(model):
        return False
    name, head = output_projection(model)
    untied = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                       device=head.weight.device, dtype=head.weight.dtype)
    untied.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    if head.bias is not None:
        untied.bias = nn.Parameter(head.bias.detach().clone(), requires_grad=head.bias.requires_grad)
    _set_submodule(model, name, untied)
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    for config in configs:
        config.tie_word_embeddings = False
    return True


def _check_linear_shape(where: str, linear: nn.Linear, config: QuantConfig) -> None:
    from suntool.quant.rtn import check_group_size

    multiple = pack_multiple(config.bits)
    check_group_size(config.group_size, linear.in_features, where)
    for what, n in (("in_features", linear.in_features), ("out_features", linear.out_features)):
        if n % multiple:
            raise SuntoolError(
                f"{where} has {what}={n}, which the {config.bits}-bit GPTQ layout cannot pack "
                f"(it needs a multiple of {multiple}); quantize with another bit width"
            )


def _check_layer_shapes(prefix: str, layers: nn.ModuleList, config: QuantConfig) -> int:
    count = 0
    for i, layer in enumerate(layers):
        for name, linear in _linears(layer):
            _check_linear_shape(f"{prefix}.{i}.{name}", linear, config)
            count += 1
    if count == 0:
        raise SuntoolError(f"the decoder layers {prefix} hold no nn.Linear to quantize")
    return count


def _check_calibration(model: nn.Module, calib_batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    import torch

    if not calib_batches:
        raise SuntoolError(
            "GPTQ needs calibration data: pass at least one batch of input_ids (or method='rtn')"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    batches = []
    for k, ids in enumerate(calib_batches):
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() not in (1, 2):
            raise SuntoolError(
                f"calibration batch {k} must be an integer tensor of token ids [batch, seq] or [seq]"
            )
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        if ids.numel() == 0:
            raise SuntoolError(f"calibration batch {k} is empty")
        if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise SuntoolError(f"calibration batch {k} holds token ids outside [0, {vocab})")
        batches.append(ids.long())
    return batches


# --------------------------------------------------------------------------------------------
# Quantizing


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the pre-hook of decoder layer 0 once its inputs are recorded."""


def _capture_layer0_inputs(model: nn.Module, layer0: nn.Module, batches: list[torch.Tensor]) -> list[tuple]:
    """(hidden_states, other positional args, kwargs) that decoder layer 0 receives, per batch."""
    import torch

    captured: list[tuple] = []

    def hook(module, args, kwargs):
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.append((hidden.detach(), rest, dict(kwargs)))
        raise _Captured

    device = next(model.parameters()).device
    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _Captured:
                    continue
                raise RuntimeError("decoder layer 0 was not called by the model's forward")
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple]) -> list[torch.Tensor]:
    outputs = []
    for hidden, rest, kwargs in inputs:
        out = layer(hidden, *rest, **kwargs)
        outputs.append((out[0] if isinstance(out, tuple) else out).detach())
    return outputs


def _input_groups(layer: nn.Module, linears: list[tuple[str, nn.Linear]], sample: tuple) -> list[list[str]]:
    """The layer's linears grouped by the input they share, in the order they are first called."""
    groups: list[tuple[Any, list[str]]] = []  # (input tensor, names); tensors kept alive on purpose

    def make_hook(name):
        def hook(module, args, output):
            for tensor, names in groups:
                if tensor is args[0]:
                    if name not in names:
                        names.append(name)
                    return
            groups.append((args[0], [name]))

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in linears]
    try:
        _run_layer(layer, [sample])
    finally:
        for h in handles:
            h.remove()
    ordered = [names for _, names in groups]
    seen = {n for names in ordered for n in names}
    unused = [name for name, _ in linears if name not in seen]
    return ordered + ([unused] if unused else [])


def _to_quant_linear(linear: nn.Linear, quantized, config: QuantConfig):
    from suntool.quant.packing import pack
    from suntool.quant.qlinear import QuantLinear

    packed = pack(quantized.intweight, quantized.zeros, quantized.scales, quantized.g_idx, config.bits)
    bias = linear.bias.detach() if linear.bias is not None else None
    return QuantLinear.from_packed(packed, config.bits, config.group_size, bias=bias)


def _rel_error(weight: torch.Tensor, dequantized: torch.Tensor) -> float:
    import torch

    w = weight.detach().to(torch.float32)
    norm = float(torch.linalg.norm(w))
    return float(torch.linalg.norm(w - dequantized.to(w.device))) / norm if norm else 0.0


def _quantize_rtn(full_name: str, linear: nn.Linear, config: QuantConfig, calib_rows: int = 0):
    from suntool.quant.rtn import rtn_quantize

    q = rtn_quantize(linear.weight, config.bits, config.group_size, sym=config.sym)
    report = LayerReport(
        name=full_name,
        in_features=linear.in_features,
        out_features=linear.out_features,
        method="rtn",
        rel_weight_error=_rel_error(linear.weight, q.dequantize()),
        calib_rows=calib_rows,
    )
    return _to_quant_linear(linear, q, config), report


def _quantize_gptq(full_name: str, linear: nn.Linear, acc, config: QuantConfig):
    from suntool.quant.gptq import gptq_quantize

    if acc.nsamples == 0:  # the calibration never reached this layer: nothing to compensate with
        return _quantize_rtn(full_name, linear, config)
    result = gptq_quantize(
        linear.weight,
        acc.hessian,
        config.bits,
        config.group_size,
        sym=config.sym,
        desc_act=config.desc_act,
        percdamp=config.damp_percent,
        block_size=config.block_size,
    )
    report = LayerReport(
        name=full_name,
        in_features=linear.in_features,
        out_features=linear.out_features,
        method="gptq",
        rel_weight_error=_rel_error(linear.weight, result.quantized.dequantize()),
        gptq_loss=result.loss,
        damp=result.damp,
        dead_inputs=result.dead_inputs,
        calib_rows=acc.nsamples,
    )
    return _to_quant_linear(linear, result.quantized, config), report


class _GroupDone(Exception):  # noqa: N818 - control flow, not an error
    """Raised after the last linear of a group has seen its input: the rest of the layer is not needed."""


def _dense_stand_in(qlinear, linear: nn.Linear) -> nn.Linear:
    """An nn.Linear computing exactly what `qlinear` computes (F.linear with its dequantized weight).

    Used while the rest of the layer is calibrated, so the packed weight is not unpacked again
    for every calibration batch.
    """
    from torch import nn

    dense = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    dense.to(device=linear.weight.device, dtype=linear.weight.dtype)
    dense.weight.data = qlinear.dequantize(linear.weight.dtype).to(linear.weight.device)
    if linear.bias is not None:
        dense.bias.data = qlinear.bias.to(linear.bias.dtype)
    return dense


def _collect_hessians(layer: nn.Module, inputs: list[tuple], group: list[tuple[str, nn.Linear]]) -> dict:
    """Run the calibration through `layer` up to the last linear of `group`; one Hessian per linear."""
    from suntool.quant.gptq import HessianAccumulator

    accs = {name: HessianAccumulator(linear.in_features, linear.weight.device) for name, linear in group}
    last = group[-1][0]

    def make_hook(name):
        def hook(module, args, output):
            accs[name].add_batch(args[0])
            if name == last:
                raise _GroupDone

        return hook

    handles = [linear.register_forward_hook(make_hook(name)) for name, linear in group]
    try:
        for hidden, rest, kwargs in inputs:
            with contextlib.suppress(_GroupDone):
                layer(hidden, *rest, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return accs


def _quantize_layer_gptq(
    layer: nn.Module, layer_name: str, inputs: list[tuple], config: QuantConfig, done: Callable
) -> list[tuple]:
    """GPTQ-quantize the linears of one decoder layer; return the next layer's inputs."""
    linears = _linears(layer)
    by_name = dict(linears)
    groups = [[name for name, _ in linears]]  # one pass for all, unless true-sequential
    if config.true_sequential:
        groups = _input_groups(layer, linears, inputs[0])
    final = {}
    for group in groups:
        accs = _collect_hessians(layer, inputs, [(name, by_name[name]) for name in group])
        for name in group:
            qlinear, report = _quantize_gptq(f"{layer_name}.{name}", by_name[name], accs[name], config)
            final[name] = qlinear
            _set_submodule(layer, name, _dense_stand_in(qlinear, by_name[name]))
            done(report)
    outputs = _run_layer(layer, inputs)
    for name, qlinear in final.items():
        _set_submodule(layer, name, qlinear)
    return [(h, rest, kwargs) for h, (_, rest, kwargs) in zip(outputs, inputs, strict=True)]


def _final_norm(model: nn.Module):
    """The norm between the last decoder layer and the lm_head (`model.model.norm` in every supported family)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    return getattr(decoder, "norm", None)


def _quantize_lm_head(model: nn.Module, inputs: list[tuple] | None, config: QuantConfig, done: Callable) -> None:
    """Quantize the (untied) lm_head; GPTQ's Hessian from the final norm of the last layer's outputs."""
    from suntool.quant.gptq import HessianAccumulator

    name, head = output_projection(model)
    if inputs is None:  # rtn
        qlinear, report = _quantize_rtn(name, head, config)
    else:
        norm = _final_norm(model)
        if norm is None:
            raise SuntoolError(f"cannot find the final norm of {type(model).__name__} to calibrate its lm_head; "
                               "quantize it with method='rtn' or drop --quantize-lm-head")
        acc = HessianAccumulator(head.in_features, head.weight.device)
        for hidden, _rest, _kwargs in inputs:
            acc.add_batch(norm(hidden))
        qlinear, report = _quantize_gptq(name, head, acc, config)
    _set_submodule(model, name, qlinear)
    done(report)


def quantize_model(
    model: nn.Module,
    calib_batches: Sequence[torch.Tensor],
    bits: int = 4,
    group_size: int = 128,
    method: str = "gptq",
    desc_act: bool = False,
    progress: Progress | None = None,
    *,
    sym: bool = False,
    damp_percent: float = 0.01,
    true_sequential: bool = True,
    block_size: int = 128,
    lm_head: bool = False,
) -> QuantizeReport:
    """Quantize every nn.Linear of `model`'s decoder layers (and with `lm_head` its output projection) in
    place; see the module docstring."""
    import torch

    config = QuantConfig(
        bits=bits,
        group_size=group_size,
        method=method,
        desc_act=desc_act,
        sym=sym,
        damp_percent=damp_percent,
        true_sequential=true_sequential,
        block_size=block_size,
        lm_head=lm_head,
    )
    config.validate()
    if is_quantized(model):
        raise SuntoolError(
            f"{type(model).__name__} is already quantized (it holds quantized layers or a "
            "quantization_config); quantize the full-precision checkpoint instead"
        )
    prefix, layers = find_decoder_layers(model)
    total = _check_layer_shapes(prefix, layers, config)
    if lm_head:
        head_name, head = output_projection(model)
        _check_linear_shape(head_name, head, config)
        total += 1
    batches = _check_calibration(model, calib_batches) if method == "gptq" else []

    start = time.perf_counter()
    reports: list[LayerReport] = []
    step = 0

    def done(report: LayerReport) -> None:
        nonlocal step
        step += 1
        reports.append(report)
        if progress is not None:
            progress(step, total, report.name)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = None
            if method == "rtn":
                for i, layer in enumerate(layers):
                    for name, linear in _linears(layer):
                        qlinear, report = _quantize_rtn(f"{prefix}.{i}.{name}", linear, config)
                        _set_submodule(layer, name, qlinear)
                        done(report)
            else:
                inputs = _capture_layer0_inputs(model, layers[0], batches)
                for i, layer in enumerate(layers):
                    inputs = _quantize_layer_gptq(layer, f"{prefix}.{i}", inputs, config, done)
            if lm_head:
                untie_lm_head(model)
                _quantize_lm_head(model, inputs, config, done)
    finally:
        model.train(was_training)
    model.config.quantization_config = config.to_quantization_config()
    return QuantizeReport(
        config=config,
        layers=tuple(reports),
        calib_batches=len(batches),
        calib_tokens=sum(int(b.numel()) for b in batches),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# Saving


def _state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    in_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if tied and out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight:
        for name, module in model.named_modules():
            if module is out_emb:
                state.pop(f"{name}.weight", None)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
        seen.add(ptr)
        tensors[key] = tensor.contiguous().cpu()
    return tensors


def save_quantized(
    model: nn.Module,
    out_dir: str | Path,
    config: QuantConfig | QuantizeReport | None = None,
    *,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (after `quantize_model`) to `out_dir` as a GPTQ checkpoint; return the path.

    `config` defaults to the `quantization_config` that `quantize_model` set on `model.config`.
    With `overwrite=False` an existing `out_dir` is an error; with True it is replaced atomically.
    """
    import json

    from safetensors.torch import save_file

    from suntool.atomic import atomic_dir
    from suntool.quant.qlinear import QuantLinear

    out_dir = Path(out_dir)
    if isinstance(config, QuantizeReport):
        config = config.config
    if isinstance(config, QuantConfig):
        qcfg = config.to_quantization_config()
    else:
        qcfg = getattr(getattr(model, "config", None), "quantization_config", None)
        if not isinstance(qcfg, dict):
            raise SuntoolError("pass the QuantConfig (or QuantizeReport) the model was quantized with")
    qlinears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not qlinears:
        raise SuntoolError(f"{type(model).__name__} holds no quantized layers; run quantize_model first")
    mismatched = {(m.bits, m.group_size) for m in qlinears} - {(qcfg["bits"], qcfg["group_size"])}
    if mismatched:
        raise SuntoolError(
            f"the model's quantized layers use (bits, group_size) {sorted(mismatched)} but the config says "
            f"({qcfg['bits']}, {qcfg['group_size']}); pass the config the model was quantized with"
        )
    if qcfg["bits"] not in SUPPORTED_BITS:
        raise SuntoolError(f"quantization_config.bits={qcfg['bits']} is not one of {SUPPORTED_BITS}")
    if out_dir.exists() and not overwrite:
        raise SuntoolError(f"{out_dir} already exists; choose another directory or pass overwrite=True")

    tensors = _state_to_save(model)
    hf_config = json.loads(model.config.to_json_string(use_diff=False))
    hf_config["quantization_config"] = qcfg
    if not hf_config.get("architectures"):
        hf_config["architectures"] = [type(model).__name__]
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        hf_config["dtype"] = str(embeddings.weight.dtype).removeprefix("torch.")

    with atomic_dir(out_dir, replace=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(
            json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        (tmp / "quantize_config.json").write_text(json.dumps(qcfg, indent=2) + "\n", encoding="utf-8")
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
