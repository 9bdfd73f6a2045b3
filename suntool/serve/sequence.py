"""One request's state inside the engine, its sampling parameters, and the events it emits.

A `Sequence` is owned by exactly one engine thread at a time (its prefill worker, then
one decode worker); other threads only set `aborted`. Its tokens are `prompt_ids +
output_ids`; outside a forward the invariant is: K/V of `tokens[:num_cached]` lie in the
blocks of `block_table`, and `tokens[num_cached]` (the last token) is fed next. The
owner calls `sink(event)` with a `SequenceEvent` per new piece of text and once at the
end (`finish_reason` set: "stop", "length" or "abort").
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    import torch

_ids = itertools.count()


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens and when it stops. temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise SuntoolError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise SuntoolError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SuntoolError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SuntoolError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SequenceEvent:
    """New text (and the token ids that produced it); `finish_reason` is set on the last event."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Sequence:
    """A request in flight: tokens, block table, timing, and where its events go."""

    model: Any  # suntool.serve.models.ServedModel
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[SequenceEvent], None]
    request_id: str = field(default_factory=lambda: f"seq-{next(_ids)}")
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0
    prefix_blocks: int = 0  # leading blocks of block_table whose content came from the prefill half
    stage: str = "waiting"  # "waiting" (queued or prefilling) | "running" (decode pool) | "done"
    aborted: bool = False
    finished: bool = False
    finish_reason: str | None = None
    preemptions: int = 0
    prefix_hit_tokens: int = 0
    arrival: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None  # prefill started (first time)
    first_token: float | None = None
    last_token: float | None = None
    finish_time: float | None = None
    worker: Any = None  # the decode worker holding it
    generator: torch.Generator | None = None
    text: Any = None  # suntool.generation.RowText, created by the engine
    pending_tokens: list[int] = field(default_factory=list)  # ids not yet sent with text

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)
