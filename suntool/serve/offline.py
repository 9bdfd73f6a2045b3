"""Offline batch generation on the serving engine: every prompt submitted at once, results in order.

`generate_offline(artifact, prompts, params, config=EngineConfig(...))` loads one artifact (a path
or built-in name) into `suntool.serve.engine.Engine`, submits every prompt (token ids) with its
`SamplingParams` (one for all, or one per prompt), waits for all of them and closes the engine.
It returns one `OfflineResult` per prompt, in order: the text (stop strings cut, special tokens
skipped, as the server streams it), the generated token ids and the finish reason. The engine
batches them continuously (`--max-batch` sequences per forward) through the compact forward, so
a few hundred short answers cost a fraction of fixed left-padded batches. A request the engine
ends with anything but "stop" or "length" raises `SuntoolError`. `on_finished(done, total,
result)` is called from engine threads as each one ends. Used by `suntool eval --engine`
(`suntool.lmeval`) and the accuracy experiment (`examples/sun_vs_baselines.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from suntool.errors import SuntoolError


@dataclass(frozen=True)
class OfflineResult:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


def generate_offline(artifact: str, prompts: Sequence[Sequence[int]], params, *, config=None,
                     on_finished: Callable[[int, int, OfflineResult], None] | None = None) -> list[OfflineResult]:
    """Generate for every prompt on a fresh engine holding `artifact`; see the module docstring."""
    from dataclasses import replace

    from suntool.serve.engine import Engine, EngineConfig

    per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} sampling params")
    config = config or EngineConfig()
    config = replace(config, max_queue=max(config.max_queue, len(prompts) + 1))
    texts: list[list[str]] = [[] for _ in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    results: list[OfflineResult | None] = [None] * len(prompts)
    finished = threading.Semaphore(0)
    lock = threading.Lock()
    done = [0]

    def sink_for(index: int):
        def sink(event) -> None:
            texts[index].append(event.text)
            tokens[index].extend(event.token_ids)
            if event.finish_reason is None:
                return
            result = results[index] = OfflineResult("".join(texts[index]), tuple(tokens[index]), event.finish_reason)
            if on_finished is not None:
                with lock:
                    done[0] += 1
                    on_finished(done[0], len(prompts), result)
            finished.release()
        return sink

    engine = Engine.from_artifacts([str(artifact)], names=["offline"], config=config)
    try:
        for index, (prompt, sampling) in enumerate(zip(prompts, per_prompt, strict=True)):
            engine.submit("offline", list(prompt), sampling, sink_for(index))
        for _ in prompts:
            finished.acquire()
    finally:
        engine.close()
    for result in results:
        if result.finish_reason not in ("stop", "length"):
            raise SuntoolError(f"the engine ended a generation with {result.finish_reason!r}")
    return results
