"""Summaries of the accuracy experiments from their evaluation files: tables with intervals, a loss-curve plot.

`write(work, comparisons=SUN_COMPARISONS)` reads every `<work>/<task>/eval-*.json` written by
`examples/sun_vs_baselines.py` or `examples/qsun_experiment.py` (whatever has finished so far) and
writes, atomically:

- `<work>/results.json`: one row per evaluated run (task, variant, seed, accuracy, per-record
  scores, NLL as served, held-out losses and curve, train seconds);
- `<work>/summary.md`: per task, accuracy as mean and 95 % interval — Student-t over seeds where
  a variant has two seeds or more, else the Wilson interval over the test records (marked W) —,
  the per-seed values, NLL as served and the held-out loss; then the paired differences named in
  `comparisons` (e.g. sun − full) on the same test records: each record's score averaged over the
  seeds both variants have, a paired bootstrap interval over records (`experiment_stats`), and
  whether the interval contains 0 ("within noise");
- `<work>/loss_curves.png` (matplotlib): held-out loss against step for every trained run, one
  panel per task, one colour per variant.

    .venv/bin/python examples/experiment_report.py runs/sun_vs_baselines
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import experiment_stats as stats  # noqa: E402

DROPBP = tuple(f"full-dropbp{p}" for p in (0.5, 0.75, 0.875))
DROPBP_LORA = tuple(f"full-lora-dropbp{p}" for p in (0.5, 0.75, 0.875))
SUN_COMPARISONS = (("sun", "full"), ("prefillshare", "full"), ("sun-lora", "full-lora"),
                   ("prefillshare-lora", "full-lora"), *((v, "full") for v in DROPBP),
                   *((v, "full-lora") for v in DROPBP_LORA))
ORDER = ("base", "full", "sun", "prefillshare", "full-lora", "sun-lora", "prefillshare-lora", "mismatched",
         "full-affine", *DROPBP, *DROPBP_LORA)


def collect(work: Path) -> list[dict]:
    """Every finished evaluation under `work` (one row per `<task>/eval-*.json`), in a stable order."""
    rows = []
    for path in sorted(Path(work).glob("*/eval-*.json")):
        row = json.loads(path.read_text())
        if "scores" not in row:
            continue
        row["task"] = path.parent.name
        row.pop("examples", None)
        rows.append(row)
    rank = {name: i for i, name in enumerate(ORDER)}
    rows.sort(key=lambda r: (r["task"], rank.get(r["variant"], len(rank)), r["variant"], r.get("seed") or 0))
    return rows


def by_variant(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """task -> variant -> its rows (one per seed)."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["task"]][row["variant"]].append(row)
    return grouped


def accuracy_interval(runs: list[dict]) -> tuple[stats.Interval, str]:
    """(interval, kind): t over seeds for two runs or more, Wilson over the test records for one."""
    if len(runs) >= 2:
        return stats.seed_interval([r["accuracy"] for r in runs]), "t"
    run = runs[0]
    return stats.wilson_interval(sum(run["scores"]), len(run["scores"])), "W"


def difference(runs_a: list[dict], runs_b: list[dict]) -> tuple[stats.Interval, list] | None:
    """b − a on the same records, seed-averaged over the seeds both have; None if they share none."""
    seeds = sorted({r.get("seed") for r in runs_a} & {r.get("seed") for r in runs_b}, key=lambda s: s or 0)
    if not seeds:
        return None
    pick = {r.get("seed"): r["scores"] for r in runs_a}, {r.get("seed"): r["scores"] for r in runs_b}
    a = stats.mean_over_seeds([pick[0][s] for s in seeds])
    b = stats.mean_over_seeds([pick[1][s] for s in seeds])
    return stats.paired_bootstrap(a, b), seeds


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summary_markdown(rows: list[dict], comparisons=SUN_COMPARISONS) -> str:
    lines = ["Accuracy: mean over seeds with its 95 % interval (t: Student-t over seeds; W: one run, Wilson "
             "interval over the test records). Differences: paired on the same test records, each record's "
             "score averaged over the seeds both variants have, 95 % paired-bootstrap interval over records "
             "(10,000 resamples).", ""]
    for task, variants in by_variant(rows).items():
        n = next(iter(variants.values()))[0]["n"]
        lines += [f"### {task} ({n} test records)", "",
                  "| variant | seeds | accuracy [95 % interval] | per seed | NLL as served | held-out loss "
                  "(start → end) |", "|---|---|---|---|---|---|"]
        for variant, runs in variants.items():
            interval, kind = accuracy_interval(runs)
            seeds = ",".join(str(r.get("seed")) if r.get("seed") is not None else "–" for r in runs)
            per_seed = " / ".join(f"{r['accuracy']:.3f}" for r in runs)
            nll = _mean(r.get("pair_nll") for r in runs)
            start, end = _mean(r.get("initial_eval_loss") for r in runs), _mean(r.get("final_eval_loss") for r in runs)
            loss = f"{start:.3f} → {end:.3f}" if start is not None and end is not None else "–"
            lines.append(f"| {variant} | {seeds} | {interval.format()} {kind} | {per_seed} | "
                         f"{'–' if nll is None else f'{nll:.3f}'} | {loss} |")
        diffs = [(b, a, difference(variants[a], variants[b])) for b, a in comparisons
                 if a in variants and b in variants]
        diffs = [(b, a, d) for b, a, d in diffs if d is not None]
        if diffs:
            lines += ["", "| difference (same records) | seeds | accuracy difference [95 % interval] | |",
                      "|---|---|---|---|"]
            for b, a, (interval, seeds) in diffs:
                verdict = "within noise" if stats.within_noise(interval) else ("better" if interval.low > 0
                                                                                else "worse")
                lines.append(f"| {b} − {a} | {','.join(str(s) for s in seeds)} | {interval.mean:+.3f} "
                             f"[{interval.low:+.3f}, {interval.high:+.3f}] | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> bool:
    """Held-out loss vs step per trained run, one panel per task; False if no run has a curve."""
    curved = [r for r in rows if len(r.get("eval_curve") or []) >= 2]
    if not curved:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in curved})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    colours = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(ORDER)}
    for ax, task in zip(axes[0], tasks, strict=True):
        labelled = set()
        for row in (r for r in curved if r["task"] == task):
            steps, losses = zip(*row["eval_curve"], strict=True)
            label = row["variant"] if row["variant"] not in labelled else None
            labelled.add(row["variant"])
            ax.plot(steps, losses, marker="o", markersize=3, color=colours.get(row["variant"], "black"),
                    alpha=0.8, label=label)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out loss (val records)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def write(work: Path, comparisons=SUN_COMPARISONS) -> list[dict]:
    """Rewrite results.json, summary.md and loss_curves.png of `work` from its finished evaluations."""
    from suntool.atomic import atomic_write_text

    work = Path(work)
    rows = collect(work)
    atomic_write_text(work / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(work / "summary.md", summary_markdown(rows, comparisons))
    plot_curves(rows, work / "loss_curves.png")
    return rows


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sun_vs_baselines"))
    print((Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sun_vs_baselines") / "summary.md").read_text())
