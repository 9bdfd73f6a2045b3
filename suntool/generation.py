"""Text in, text out over the handoff: tokenization, chat templates, stop strings, streaming.

`generate_texts(artifact, prompts, config)` batches prompts (left-padded), runs
`prefill` with the artifact's prefill half and `decode` with its decode half, and returns
one `TextGeneration` per prompt. `stream_text(artifact, prompt, config)` yields the answer
of one prompt piece by piece as tokens arrive (incremental detokenization that never emits
half a UTF-8 character). Stop strings end a row and are cut from its text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from suntool.artifact import LoadedArtifact
from suntool.handoff import SamplingConfig


@dataclass(frozen=True)
class TextGeneration:
    text: str
    tokens: tuple[int, ...]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int


def render_prompt(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> str:
    """The prompt as the model sees it: raw, or through the tokenizer's chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        from suntool.errors import SuntoolError

        raise SuntoolError("this model's tokenizer has no chat template; drop --chat and pass the raw prompt")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, texts: Sequence[str], *, add_special_tokens: bool = True):
    """Left-padded `input_ids`, `attention_mask` tensors for a batch of texts.

    Chat-rendered texts already hold their special tokens: pass `add_special_tokens=False`.
    """
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    return batch["input_ids"], batch["attention_mask"]


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.index(stop) for stop in stop_strings if stop and stop in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class RowText:
    """Per-row incremental detokenizer with stop-string detection."""

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer, self.stop_strings = tokenizer, tuple(stop_strings)
        self.tokens: list[int] = []
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return newly final text (held back while it ends mid-character)."""
        self.tokens.append(token)
        full = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        full, self.stopped = _cut_at_stop(full, self.stop_strings)
        if full.endswith("\ufffd") and not self.stopped:
            return ""
        longest_stop = max((len(s) for s in self.stop_strings), default=0)
        safe = full if self.stopped or not longest_stop else full[: max(len(self.text), len(full) - longest_stop + 1)]
        delta = safe[len(self.text):] if safe.startswith(self.text) else ""
        self.text = self.text + delta
        return delta

    def flush(self) -> str:
        full = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        full, _ = _cut_at_stop(full, self.stop_strings)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += delta
        return delta


def _run(artifact: LoadedArtifact, texts: Sequence[str], config: SamplingConfig, rows: list[RowText], chat: bool):
    import torch

    from suntool.handoff import decode_steps, prefill

    tokenizer = artifact.tokenizer
    input_ids, attention_mask = encode(tokenizer, texts, add_special_tokens=not chat)
    prefill_model, decode_model = artifact.prefill_model, artifact.decode_model
    input_ids, attention_mask = input_ids.to(prefill_model.device), attention_mask.to(prefill_model.device)

    def stop_check(row: int, _token: int) -> bool:
        return rows[row].stopped

    with torch.no_grad():
        handoff = prefill(prefill_model, input_ids, attention_mask, first_token=artifact.manifest.handoff.first_token)
        handoff.to(device=decode_model.device, dtype=decode_model.dtype)
        steps = decode_steps(
            decode_model, handoff, config, pad_token_id=tokenizer.pad_token_id or 0, stop_check=stop_check
        )
        for step in steps:
            deltas = {}
            for row in step.active.nonzero().flatten().tolist():
                deltas[row] = rows[row].push(int(step.tokens[row]))
            yield deltas


def generate_texts(
    artifact: LoadedArtifact, prompts: Sequence[str], config: SamplingConfig, *, chat: bool = False
) -> list[TextGeneration]:
    """Generate a completion for every prompt in one batch through the prefill→decode path."""
    from suntool.handoff import eos_ids_of

    tokenizer = artifact.tokenizer
    texts = [render_prompt(tokenizer, prompt, chat=chat) for prompt in prompts]
    rows = [RowText(tokenizer, config.stop_strings) for _ in texts]
    for _ in _run(artifact, texts, config, rows, chat):
        pass
    eos = set(eos_ids_of(artifact.decode_model, config))
    results = []
    for text, row in zip(texts, rows, strict=True):
        row.flush()
        finished = row.stopped or bool(row.tokens and row.tokens[-1] in eos) or len(row.tokens) < config.max_new_tokens
        results.append(
            TextGeneration(
                text=row.text,
                tokens=tuple(row.tokens),
                finish_reason="stop" if finished else "length",
                prompt_tokens=len(tokenizer(text, add_special_tokens=not chat)["input_ids"]),
            )
        )
    return results


def stream_text(
    artifact: LoadedArtifact, prompt: str, config: SamplingConfig, *, chat: bool = False
) -> Iterator[str]:
    """Yield the answer to one prompt as text pieces, as soon as they are final."""
    tokenizer = artifact.tokenizer
    row = RowText(tokenizer, config.stop_strings)
    for deltas in _run(artifact, [render_prompt(tokenizer, prompt, chat=chat)], config, [row], chat):
        if deltas.get(0):
            yield deltas[0]
    tail = row.flush()
    if tail:
        yield tail
