"""Per-row token choice for a batch whose rows belong to different requests.

`choose_tokens(logits, seqs)` returns one token per row: argmax for greedy rows (exactly
what `suntool.handoff.decode` picks), and for sampled rows temperature, top-k and top-p
filtering then a draw from the row's own `torch.Generator`, seeded from the request's
`seed`, so a seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from suntool.serve.sequence import Sequence


def generator_for(seq: Sequence):
    """The request's generator (created on first use; seeded when the request gave a seed)."""
    import torch

    if seq.generator is None:
        seq.generator = torch.Generator(device="cpu")
        seq.generator.manual_seed(seq.params.seed if seq.params.seed is not None else torch.seed())
    return seq.generator


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    import torch

    params = seq.params
    scores = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p  # keep the token crossing top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator_for(seq)))


def choose_tokens(logits: torch.Tensor, seqs: Seq[Sequence]) -> list[int]:
    """One token per row of `logits` [B, V] following each row's request parameters."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        if not seq.params.greedy:
            tokens[row] = _sample_row(logits[row], seq)
    return tokens
