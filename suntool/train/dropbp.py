"""DropBP (Drop Backward Propagation), native: skip the backward of whole residual branches.

Every decoder layer has two residual branches, attention and MLP. `DropBP(model, p)` puts
a drop layer at the end of each branch, just before its residual add: a forward hook on
the branch's last module that returns `output.detach()` when the branch is dropped this
micro-step. The forward values are unchanged (detach does not change values), so the loss
is the same; the backward of a dropped branch (and of everything that only feeds it, the
pre-norm included) is skipped and its parameters get no gradient that step.

Branch ends, generic over the supported architectures through each layer's submodules:
Llama, Qwen2/3, Mistral and Phi-3 layers add `self_attn`'s and `mlp`'s outputs to the
residual (Phi-3's residual dropout comes after the detach); Gemma-2/3 layers wrap each
branch in an extra norm, so the drop layer sits after `post_attention_layernorm` and
`post_feedforward_layernorm`. A layer without `self_attn` and `mlp` is refused.

The K/V a layer writes into the cache leave the attention branch by another route than
its output. Where the training path reads a model's cache (SUN trains the prefill half
through its K/V), `attention_dropped(layer)` tells it to detach that layer's K/V too, so a
dropped attention branch gets no backward at all.

Rates: every branch starts at rate p. `calibrate(grad_norm_of)` (the loop calls it once,
after 10% of the steps, on the first `CALIBRATION_EXAMPLES` examples of that step's first
micro-batch: 2L+1 forward/backward passes for L layers, so it stays cheap next to the run)
measures each branch's sensitivity — the squared drop in gradient
norm when only that branch is dropped, s_i = (|g| - |g_{-i}|)^2 — and `allocate_rates`
reassigns rates greedily in 0.1 steps (each at most 0.9) until the expected kept
backward FLOPs are at most (1 - p) of the total. Each step raises the rate of the branch
with the lowest s_i * (rate_i + 0.1) / flops_i (least gradient distortion per FLOP saved,
growing with the rate so drops spread over layers); the last step goes to the branch that
lands nearest the budget. A branch's backward FLOPs are taken as proportional to its
parameter count (times the tokens, the same for every branch); the attention score/value
products (quadratic in sequence length) are not counted, which understates attention
branches for sequences much longer than the hidden size. Embeddings and the LM head are
never dropped and are not part of the total.

Which branches drop on a micro-step is a function of (seed, step, micro-step) only, so
runs are reproducible, resumable, and identical on every DDP process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    from torch import nn

RATE_STEP = 0.1
MAX_RATE = 0.9
CALIBRATION_EXAMPLES = 2


@dataclass(frozen=True)
class Branch:
    layer: int
    kind: str  # "attention" | "mlp"
    end: Any  # nn.Module whose output is detached
    members: tuple[Any, ...]  # modules whose parameters belong to the branch
    flops: float  # relative backward FLOPs per token: the branch's parameter count

    @property
    def name(self) -> str:
        return f"layer{self.layer}.{self.kind}"

    def parameters(self):
        for module in self.members:
            yield from module.parameters()


def decoder_layers(model: nn.Module):
    """The decoder layers of a causal LM (a PEFT-wrapped one included)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise SuntoolError(f"DropBP cannot find the decoder layers of {type(base).__name__}; drop --dropbp")
    return layers


def find_branches(model: nn.Module) -> list[Branch]:
    """The attention and MLP branch of every decoder layer, in order."""
    branches = []
    for index, layer in enumerate(decoder_layers(model)):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            raise SuntoolError(
                f"DropBP needs decoder layers with `self_attn` and `mlp`; {type(layer).__name__} has "
                f"{[name for name, _ in layer.named_children()]}; drop --dropbp"
            )
        if hasattr(layer, "post_feedforward_layernorm"):  # Gemma-2/3 sandwich norms
            attn_members = (layer.input_layernorm, attn, layer.post_attention_layernorm)
            mlp_members = (layer.pre_feedforward_layernorm, mlp, layer.post_feedforward_layernorm)
            attn_end, mlp_end = layer.post_attention_layernorm, layer.post_feedforward_layernorm
        else:
            attn_members = (layer.input_layernorm, attn)
            mlp_members = (layer.post_attention_layernorm, mlp)
            attn_end, mlp_end = attn, mlp
        for kind, end, members in (("attention", attn_end, attn_members), ("mlp", mlp_end, mlp_members)):
            flops = float(sum(p.numel() for m in members for p in m.parameters()))
            branches.append(Branch(index, kind, end, members, flops))
    return branches


def _detach(output):
    if isinstance(output, tuple):
        return (output[0].detach(), *output[1:])
    return output.detach()


def allocate_rates(
    sensitivities: list[float], flops: list[float], target: float, *, step: float = RATE_STEP, cap: float = MAX_RATE
) -> list[float]:
    """Greedy rates in `step` increments (each <= cap) so that kept FLOPs <= (1 - target) * total."""
    n = len(flops)
    steps_cap = round(cap / step)
    tenths = [0] * n
    total = sum(flops)
    budget = (1 - target) * total + 1e-9 * total
    kept = total

    def cost(i: int) -> tuple[float, int, int]:
        return (sensitivities[i] * (tenths[i] + 1) / max(flops[i], 1e-12), tenths[i], i)

    while kept > budget:
        candidates = [i for i in range(n) if tenths[i] < steps_cap]
        if not candidates:
            break
        crossing = [i for i in candidates if kept - step * flops[i] <= budget]
        if crossing:  # last increment: land as near the budget as possible
            choice = min(crossing, key=lambda i: (budget - (kept - step * flops[i]), cost(i)))
        else:
            choice = min(candidates, key=cost)
        tenths[choice] += 1
        kept -= step * flops[choice]
    return [round(t * step, 6) for t in tenths]


class DropBP:
    """Drop layers on every attention/MLP branch of `model` (see the module docstring)."""

    def __init__(self, model: nn.Module, rate: float, *, seed: int = 0):
        if not 0 <= rate <= MAX_RATE:
            raise SuntoolError(f"--dropbp must be in [0, {MAX_RATE}], got {rate}")
        self.target = rate
        self.seed = seed
        self.branches = find_branches(model)
        self.rates = [rate] * len(self.branches)
        self.calibrated = False
        self.sensitivities: list[float] | None = None
        self.dropped: frozenset[int] = frozenset()
        self.kept_flops = 0.0  # realised, summed over sampled micro-steps
        self.total_flops = 0.0
        self._attention_index = {b.layer: i for i, b in enumerate(self.branches) if b.kind == "attention"}
        self._hooks = [b.end.register_forward_hook(self._hook(i)) for i, b in enumerate(self.branches)]

    def _hook(self, index: int) -> Callable:
        import torch

        def hook(_module, _args, output):
            if index in self.dropped and torch.is_grad_enabled():
                return _detach(output)
            return None

        return hook

    @property
    def flops(self) -> list[float]:
        return [b.flops for b in self.branches]

    def attention_dropped(self, layer: int) -> bool:
        index = self._attention_index.get(layer)
        return index is not None and index in self.dropped

    def sample(self, step: int, micro: int = 0) -> frozenset[int]:
        """Draw this micro-step's dropped branches from (seed, step, micro) and record the kept FLOPs."""
        import torch

        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step * 1_009 + micro) % (2**63))
        draws = torch.rand(len(self.branches), generator=generator).tolist()
        self.dropped = frozenset(i for i, (u, r) in enumerate(zip(draws, self.rates, strict=True)) if u < r)
        flops = self.flops
        self.total_flops += sum(flops)
        self.kept_flops += sum(f for i, f in enumerate(flops) if i not in self.dropped)
        return self.dropped

    def set_dropped(self, indices) -> None:
        self.dropped = frozenset(indices)

    @property
    def expected_kept_fraction(self) -> float:
        flops = self.flops
        return sum((1 - r) * f for r, f in zip(self.rates, flops, strict=True)) / sum(flops)

    @property
    def realised_kept_fraction(self) -> float | None:
        return self.kept_flops / self.total_flops if self.total_flops else None

    def calibrate(self, grad_norm_of: Callable[[frozenset[int]], float],
                  reduce: Callable[[list[float]], list[float]] | None = None) -> list[float]:
        """Measure sensitivities with `grad_norm_of(dropped) -> |g|`, then re-allocate the rates.

        `reduce` averages the sensitivities over processes (DDP), so every process gets the same rates.
        """
        saved = self.dropped
        full = grad_norm_of(frozenset())
        sensitivities = [(full - grad_norm_of(frozenset({i}))) ** 2 for i in range(len(self.branches))]
        if reduce is not None:
            sensitivities = reduce(sensitivities)
        self.sensitivities = sensitivities
        self.rates = allocate_rates(sensitivities, self.flops, self.target)
        self.calibrated = True
        self.dropped = saved
        return self.rates

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rates": list(self.rates), "calibrated": self.calibrated,
                "sensitivities": self.sensitivities, "kept_flops": self.kept_flops, "total_flops": self.total_flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["rates"]) != len(self.branches):
            raise SuntoolError("the checkpoint's DropBP state has another number of branches; resume the same model")
        self.rates = [float(r) for r in state["rates"]]
        self.calibrated = bool(state["calibrated"])
        self.sensitivities = state.get("sensitivities")
        self.kept_flops = float(state.get("kept_flops", 0.0))
        self.total_flops = float(state.get("total_flops", 0.0))

    def remove(self) -> None:
        """Take the drop layers out of the model."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.dropped = frozenset()
