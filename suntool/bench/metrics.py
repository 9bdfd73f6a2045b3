"""Reading a server's Prometheus text exposition: what `suntool bench` takes from `/metrics`.

`parse_prometheus(text)` returns {metric name: value}, the samples of one name summed
over their label sets (comments and malformed lines skipped). `prefix_cache_hit_tokens`
picks the prompt tokens served from the prefix cache out of that: suntool's
`suntool_prefix_cache_hit_tokens_total` or vLLM's `vllm:prefix_cache_hits_total`, None
when the server exports neither. The bench reads the metrics before and after each run
and reports the difference (`counter_delta`).
"""

from __future__ import annotations

import math
import re

PREFIX_CACHE_HIT_METRICS = ("suntool_prefix_cache_hit_tokens_total", "vllm:prefix_cache_hits_total")

_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)(?:\s+\S+)?\s*$')


def parse_prometheus(text: str) -> dict[str, float]:
    """{name: sum of its samples over every label set}; `# HELP`/`# TYPE` and unreadable lines are skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


def prefix_cache_hit_tokens(metrics: dict[str, float] | None) -> float | None:
    """Prompt tokens served from the prefix cache so far, by whichever name the server uses; None if absent."""
    if not metrics:
        return None
    for name in PREFIX_CACHE_HIT_METRICS:
        if name in metrics:
            return metrics[name]
    return None


def counter_delta(before: float | None, after: float | None) -> float | None:
    """after - before for a counter read around a run; None when either read is missing or not finite."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    return after - before
