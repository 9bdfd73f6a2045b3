"""`suntool simulate`'s outputs: the JSON document and the sweep plot.

`report_dict(config, costs_label, results, sweep_rows)` is the strict-JSON document
(`simulate.json`): the configuration, per layout every `SimSummary` field plus the
searches, and for a sweep one row per value. `per_device(result)` is the figure of
merit the tables and the plot use: with the capacity search, the output tokens/s per
device at the highest rate the given devices sustain at the SLOs (`goodput_per_device`);
with the devices search, the rate's output tokens/s per device needed
(`throughput_per_needed_device`); else output tokens/s per device at the given
allocation. `plot_sweep(rows, parameter, path)` draws it against
the swept parameter, one line per layout, and each layout's ratio over dedicated P/D
(the shape of the SUN paper's throughput-per-GPU figure).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path


def per_device(result) -> float:
    if result.goodput_per_device is not None:
        return result.goodput_per_device
    if result.throughput_per_needed_device is not None:
        return result.throughput_per_needed_device
    return result.summary.throughput_per_device


def ratios_over_dedicated(results) -> dict[str, float]:
    base = next((per_device(r) for r in results if r.layout == "dedicated"), None)
    if not base:
        return {}
    return {r.layout: per_device(r) / base for r in results}


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def report_dict(config, costs_label: str, results=None, sweep_rows=None, parameter: str | None = None) -> dict:
    doc = {"format": "suntool-simulate", "version": 1, "costs": costs_label, "config": asdict(config)}
    if results is not None:
        doc["layouts"] = [r.to_dict() for r in results]
        doc["per_device_over_dedicated"] = ratios_over_dedicated(results)
    if sweep_rows is not None:
        doc["sweep"] = {"parameter": parameter, "rows": [
            {"value": row["value"], "layouts": [r.to_dict() for r in row["results"]],
             "per_device": {r.layout: per_device(r) for r in row["results"]},
             "per_device_over_dedicated": ratios_over_dedicated(row["results"])} for row in sweep_rows]}
    return _clean(doc)


def write_json(path: Path, doc: dict) -> None:
    from suntool.atomic import atomic_write_text

    atomic_write_text(Path(path), json.dumps(doc, indent=1, allow_nan=False) + "\n")


def plot_sweep(rows: list[dict], parameter: str, path: Path, *, title: str, slo: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = [r.layout for r in rows[0]["results"]]
    xs = [row["value"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for layout in layouts:
        ys = [per_device(next(r for r in row["results"] if r.layout == layout)) for row in rows]
        left.plot(xs, ys, marker="o", label=layout)
        ratios = [ratios_over_dedicated(row["results"]).get(layout, math.nan) for row in rows]
        right.plot(xs, ratios, marker="o", label=layout)
    what = "output tok/s per device meeting the SLOs" if slo else "output tok/s per device"
    left.set(xlabel=parameter, ylabel=what, title="throughput per device")
    right.set(xlabel=parameter, ylabel="× dedicated P/D", title="per device, over dedicated P/D")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
