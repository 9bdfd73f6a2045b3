"""The prefill→decode handoff: the heart of suntool.

    handoff = prefill(prefill_model, input_ids, attention_mask)   # prompt -> KV cache
    result  = decode(decode_model, handoff, SamplingConfig(...))  # KV cache -> new tokens

`prefill` runs the prompt through one model and returns a `KVHandoff`: a transformers
`Cache` holding the prompt's K/V at every layer, the attention mask over it, and either
the last prompt token still to be fed (`first_token="decode"`, the default and vLLM's P/D
convention: the decode module recomputes the last prompt token, so prefill emits K/V for
`prompt[:-1]`) or the logits of the first new token (`first_token="prefill"`).

`decode` continues generation with another model of the same architecture reading that
cache: greedy or sampled (temperature, top-k, top-p, seeded), stopping on EOS, stop
strings or `max_new_tokens`. With the same weights in both halves, greedy tokens and the
per-step logits equal `model.generate` (positions and masks are built exactly as
`generate` builds them: left padding, position = running count of real tokens).

Everything here is tensors in, tensors out; tokenization and text streaming live in
`suntool.generation`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import Cache, PreTrainedModel

FirstToken = Literal["decode", "prefill"]
FIRST_TOKEN_CONVENTIONS: tuple[str, ...] = ("decode", "prefill")


@dataclass
class KVHandoff:
    """What the prefill module hands to the decode module.

    `attention_mask` covers the cached tokens plus `pending_ids` (if any), left-padded.
    Exactly one of `pending_ids` ([B, 1], decode convention) and `first_logits` ([B, V],
    prefill convention) is set.
    """

    cache: Cache
    attention_mask: torch.Tensor
    pending_ids: torch.Tensor | None = None
    first_logits: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    def to(self, device=None, dtype=None) -> KVHandoff:
        """Move the cache (and tensors) to the decode module's device/dtype, in place."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys = layer.keys.to(device=device, dtype=dtype)
                layer.values = layer.values.to(device=device, dtype=dtype)
        self.attention_mask = self.attention_mask.to(device)
        if self.pending_ids is not None:
            self.pending_ids = self.pending_ids.to(device)
        if self.first_logits is not None:
            self.first_logits = self.first_logits.to(device)
        return self


@dataclass(frozen=True)
class SamplingConfig:
    """How `decode` picks tokens and when it stops. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None  # None: the decode model's generation_config
    output_logits: bool = False

    def __post_init__(self) -> None:
        from suntool.errors import SuntoolError

        if self.max_new_tokens < 1:
            raise SuntoolError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SuntoolError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SuntoolError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SuntoolError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class DecodeStep:
    """One step of `decode_steps`: the token chosen for every row (pad for finished rows)."""

    tokens: torch.Tensor  # [B]
    logits: torch.Tensor  # [B, V], raw model logits this step
    active: torch.Tensor  # [B] bool: rows that were still generating this step


@dataclass
class DecodeResult:
    """Generated tokens per row (EOS included when hit), why each row stopped, and optionally logits."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" (EOS or stop string) or "length"
    logits: list[torch.Tensor] = field(default_factory=list)  # one [B, V] per step if requested


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ids, mask) with every row's padding moved to the left (a no-op if it already is)."""
    import torch

    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    attention_mask = attention_mask.to(torch.long)
    if input_ids.shape[1] == 0 or bool((attention_mask[:, -1] == 1).all()):
        return input_ids, attention_mask
    # A stable sort on the mask puts pads (0) first and keeps real tokens in order.
    order = torch.sort(attention_mask, dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` builds them: running count of real tokens minus one, 0 on pads."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def forward_with_cache(model, input_ids, attention_mask, cache, *, logits_to_keep: int = 1):
    """One forward of `input_ids` appended to `cache`; returns logits [B, logits_to_keep, V]."""
    positions = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits


def new_cache(model) -> Cache:
    """An empty cache laid out for `model` (sliding-window layers included)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def prefill(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    first_token: FirstToken = "decode",
) -> KVHandoff:
    """Run the prompt through `model` and return its K/V as a `KVHandoff`.

    Gradients flow through the cache when called with grad enabled (SUN training); wrap
    the call in `torch.no_grad()` for inference.
    """
    from suntool.errors import SuntoolError

    if first_token not in FIRST_TOKEN_CONVENTIONS:
        raise SuntoolError(f"first_token must be one of {FIRST_TOKEN_CONVENTIONS}, got {first_token!r}")
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise SuntoolError(f"input_ids must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}")
    input_ids, attention_mask = left_align(input_ids, attention_mask)
    if bool((attention_mask.sum(dim=1) == 0).any()):
        raise SuntoolError("every prompt needs at least one token; got an empty prompt in the batch")
    cache = new_cache(model)
    if first_token == "decode":
        if input_ids.shape[1] > 1:
            forward_with_cache(model, input_ids[:, :-1], attention_mask[:, :-1], cache)
        return KVHandoff(cache=cache, attention_mask=attention_mask, pending_ids=input_ids[:, -1:])
    logits = forward_with_cache(model, input_ids, attention_mask, cache)
    return KVHandoff(cache=cache, attention_mask=attention_mask, first_logits=logits[:, -1, :])


def continuation_logits(
    model: PreTrainedModel,
    handoff: KVHandoff,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced logits [B, Lc, V] predicting each continuation token from the handoff's cache.

    The decode half reads the prefill half's K/V (gradients flow into the cache when it
    carries them: this is SUN's training forward and lm-eval's scoring forward).
    Continuations are right-padded (`continuation_mask` 0 on pads); the cache is extended
    in place.
    """
    import torch

    if continuation_mask is None:
        continuation_mask = torch.ones_like(continuation_ids)
    mask = torch.cat([handoff.attention_mask, continuation_mask[:, :-1].to(handoff.attention_mask.dtype)], dim=-1)
    if handoff.pending_ids is not None:
        inputs = torch.cat([handoff.pending_ids, continuation_ids[:, :-1]], dim=-1)
        return forward_with_cache(model, inputs, mask, handoff.cache, logits_to_keep=0)
    first = handoff.first_logits[:, None, :]
    if continuation_ids.shape[1] == 1:
        return first
    rest = forward_with_cache(model, continuation_ids[:, :-1], mask, handoff.cache, logits_to_keep=0)
    return torch.cat([first.to(rest.dtype), rest], dim=1)


def _logits_warpers(config: SamplingConfig):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if config.greedy:
        return warpers
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k > 0:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return warpers


def eos_ids_of(model, config: SamplingConfig) -> tuple[int, ...]:
    """The EOS ids to stop on: the config's, else the model's generation_config's."""
    if config.eos_token_ids is not None:
        return tuple(config.eos_token_ids)
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def decode_steps(
    model: PreTrainedModel,
    handoff: KVHandoff,
    config: SamplingConfig,
    *,
    pad_token_id: int = 0,
    stop_check: Callable[[int, int], bool] | None = None,
) -> Iterator[DecodeStep]:
    """Yield one `DecodeStep` per generated position until every row stops.

    `stop_check(row, token)` is called for each active row after its token is chosen and
    returns True when that row must stop (stop strings); EOS and the length limit are
    handled here. Finished rows keep being fed `pad_token_id`, as `generate` does.
    """
    import torch

    eos = torch.tensor(eos_ids_of(model, config), dtype=torch.long, device=handoff.attention_mask.device)
    warpers = _logits_warpers(config)
    generator = None
    if not config.greedy:
        generator = torch.Generator(device=handoff.attention_mask.device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())
    cache, mask = handoff.cache, handoff.attention_mask
    active = torch.ones(handoff.batch_size, dtype=torch.bool, device=mask.device)
    next_input, logits = handoff.pending_ids, handoff.first_logits
    for _ in range(config.max_new_tokens):
        if logits is None:
            logits = forward_with_cache(model, next_input, mask, cache)[:, -1, :]
        logits = logits.float()
        if config.greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(warpers(None, logits.clone()), dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        tokens = torch.where(active, tokens, torch.full_like(tokens, pad_token_id))
        yield DecodeStep(tokens=tokens, logits=logits, active=active.clone())
        still = active & ~torch.isin(tokens, eos)
        if stop_check is not None:
            for row in still.nonzero().flatten().tolist():
                if stop_check(row, int(tokens[row])):
                    still[row] = False
        active = still
        if not bool(active.any()):
            return
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        next_input, logits = tokens[:, None], None


def decode(
    model: PreTrainedModel,
    handoff: KVHandoff,
    config: SamplingConfig | None = None,
    *,
    pad_token_id: int = 0,
    stop_check: Callable[[int, int], bool] | None = None,
) -> DecodeResult:
    """Run `decode_steps` to the end and collect tokens, finish reasons and (optionally) logits."""
    config = config or SamplingConfig()
    batch = handoff.batch_size
    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    logits = []
    steps = decode_steps(model, handoff, config, pad_token_id=pad_token_id, stop_check=stop_check)
    eos = set(eos_ids_of(model, config))
    for step in steps:
        if config.output_logits:
            logits.append(step.logits)
        for row in step.active.nonzero().flatten().tolist():
            tokens[row].append(int(step.tokens[row]))
    for row, row_tokens in enumerate(tokens):
        if len(row_tokens) < config.max_new_tokens or (row_tokens and row_tokens[-1] in eos):
            reasons[row] = "stop"
    return DecodeResult(tokens=tokens, finish_reasons=reasons, logits=logits)


def prefill_decode(
    prefill_model: PreTrainedModel,
    decode_model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: SamplingConfig | None = None,
    *,
    first_token: FirstToken = "decode",
    pad_token_id: int = 0,
    stop_check: Callable[[int, int], bool] | None = None,
) -> DecodeResult:
    """The whole path under no-grad: prefill with one model, decode with the other."""
    import torch

    with torch.no_grad():
        handoff = prefill(prefill_model, input_ids, attention_mask, first_token=first_token)
        handoff.to(device=decode_model.device, dtype=decode_model.dtype)
        return decode(decode_model, handoff, config, pad_token_id=pad_token_id, stop_check=stop_check)


def check_pairable(prefill_config, decode_config) -> None:
    """Refuse two halves whose caches cannot be exchanged (architecture, shapes, vocabulary).

    Takes `config.json` dicts or transformers config objects.
    """
    from suntool.errors import ArtifactError

    def geometry(config) -> dict:
        raw = config if isinstance(config, dict) else config.to_dict()
        raw = raw.get("text_config") or raw
        heads = raw.get("num_attention_heads")
        return {
            "model_type": raw.get("model_type"),
            "num_hidden_layers": raw.get("num_hidden_layers"),
            "num_key_value_heads": raw.get("num_key_value_heads") or heads,
            "head_dim": raw.get("head_dim") or (raw.get("hidden_size", 0) // heads if heads else None),
            "vocab_size": raw.get("vocab_size"),
        }

    left, right = geometry(prefill_config), geometry(decode_config)
    diffs = [f"{key}: prefill={left[key]!r} decode={right[key]!r}" for key in left if left[key] != right[key]]
    if diffs:
        raise ArtifactError(
            "the prefill and decode halves cannot share a KV cache (" + "; ".join(diffs) + "); "
            "pair halves split from the same base model"
        )
