"""`suntool eval`: lm-eval over one or more artifacts, one comparison table.

`run_eval(EvalConfig(...))` validates everything a user can get wrong before loading a
model (artifacts, task names, `--limit`, output dir), then for each artifact builds the
`suntool` lm-eval model (`suntool.lmeval.SuntoolLM`: prefill half → K/V → decode half)
and calls `lm_eval.simple_evaluate` with a `TaskManager` that includes the bundled
offline tasks (`suntool.evals`) and any `--include-path`. It returns an `EvalReport`
(one row per artifact, one column per task metric, with stderr) and, with `output`,
writes per-artifact `results.json` (+ samples), `summary.csv`, `summary.md` and the
`eval.yaml` config. Hub downloads are switched off: a task whose data is not local
fails with a message saying so.

Real benchmarks read offline (`suntool.evals.humaneval`, `suntool.evals.bfcl`): `humaneval`
(greedy pass@1; `n_samples` > 1 samples that many completions per problem at `temperature`,
default 0.8, top-p 0.95, and adds pass@k for k <= n) and the `bfcl_*` tasks (group `bfcl`),
which are rendered through the model's chat template when it has one (BFCL's system + user
messages), in a separate lm-eval call from the other tasks. Their data is checked before any
model loads (missing package or files: the command that fetches them). HumanEval's completions
run in suntool's sandbox, so lm-eval's `confirm_run_unsafe_code` is given. lm-eval's probe for
a git commit runs with its stderr silenced (outside a repository it printed `fatal: not a git
repository`).

`cache` (a directory): lm-eval's response cache, one SQLite file per artifact label, written
after every finished request, so an interrupted evaluation re-run with the same `cache` redoes
only what was not finished (sampled generations, `n_samples` > 1, are never cached).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from suntool.errors import SuntoolError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvalConfig:
    artifacts: tuple[str, ...]
    tasks: tuple[str, ...]
    limit: int | None = None
    num_fewshot: int | None = None
    output: Path | None = None
    log_samples: bool = False
    batch_size: int = 8
    dtype: str = "float32"
    include_path: Path | None = None
    allow_mismatch: bool = False
    seed: int = 1234
    n_samples: int = 1
    temperature: float | None = None
    cache: Path | None = None
    engine: bool = False  # generate_until on the serving engine (`suntool.lmeval`, engine=true)

    def validate(self) -> None:
        if not self.artifacts:
            raise SuntoolError("pass at least one artifact (or checkpoint, or built-in model name) to evaluate")
        if not self.tasks:
            raise SuntoolError("pass --tasks, e.g. --tasks suntool_arith,suntool_arith_mc")
        if self.limit is not None and self.limit < 1:
            raise SuntoolError(f"--limit must be at least 1 (or omitted for the whole test set), got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise SuntoolError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.batch_size < 1:
            raise SuntoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.n_samples < 1:
            raise SuntoolError(f"--n must be at least 1 (samples per HumanEval problem), got {self.n_samples}")
        if self.n_samples > 1 and "humaneval" not in self.tasks:
            raise SuntoolError("--n samples several completions per HumanEval problem: add humaneval to --tasks")
        if self.temperature is not None and (self.temperature <= 0 or self.n_samples == 1):
            raise SuntoolError("--temperature needs --n > 1 and a value > 0 (one sample per problem is greedy)")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise SuntoolError(f"--include-path {self.include_path} is not a directory of lm-eval task YAMLs")


@dataclass(frozen=True)
class MetricValue:
    value: float
    stderr: float | None


@dataclass
class EvalReport:
    """rows[artifact][f"{task}/{metric}"] = MetricValue; raw lm-eval results per artifact."""

    rows: dict[str, dict[str, MetricValue]] = field(default_factory=dict)
    raw: dict[str, dict] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for metrics in self.rows.values():
            seen.update(dict.fromkeys(metrics))
        return list(seen)

    def markdown(self) -> str:
        columns = self.columns
        lines = ["| artifact | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, metrics in self.rows.items():
            cells = [format_metric(metrics.get(column)) for column in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["artifact", "task_metric", "value", "stderr"])
        for name, metrics in self.rows.items():
            for column, metric in metrics.items():
                writer.writerow([name, column, metric.value, "" if metric.stderr is None else metric.stderr])
        return buffer.getvalue()


def format_metric(metric: MetricValue | None) -> str:
    if metric is None:
        return "—"
    return f"{metric.value:.4f}" + (f" ± {metric.stderr:.4f}" if metric.stderr is not None else "")


def check_output_dir(output: Path) -> None:
    """Create `output` and prove it is writable, or raise a SuntoolError naming it."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".suntool-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SuntoolError(f"--output {output} is not writable ({err.strerror}); choose another directory") from err


CHAT_TASKS = ("bfcl", "bfcl_simple", "bfcl_multiple", "bfcl_parallel", "bfcl_parallel_multiple")
SAMPLING_TEMPERATURE, SAMPLING_TOP_P = 0.8, 0.95


def check_task_data(names: tuple[str, ...]) -> None:
    """SuntoolError (saying what to install or fetch) unless the offline data of every named benchmark is here."""
    from suntool.evals import bfcl_data, humaneval

    for name in names:
        if name == "humaneval":
            humaneval.data_path()
        elif name == "bfcl":
            for task in bfcl_data.CATEGORIES:
                bfcl_data.check_available(task)
        elif name.startswith("bfcl_"):
            bfcl_data.check_available(name)


def _closest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _sampling_overrides(config: EvalConfig) -> Path | None:
    """A directory with a `humaneval` YAML sampling `n_samples` completions per problem, or None (greedy)."""
    if config.n_samples == 1:
        return None
    import atexit
    import shutil
    import tempfile

    import yaml

    from suntool.evals.humaneval import STOP_STRINGS
    from suntool.evals.registry import session_tasks_dir

    # not inside the session's task dir: lm-eval indexes include paths recursively, and a later greedy run
    # in this process must not find this override there
    directory = Path(tempfile.mkdtemp(prefix="suntool-eval-overrides-"))
    atexit.register(shutil.rmtree, directory, True)
    override = {
        "include": str(session_tasks_dir() / "humaneval.yaml"),
        "task": "humaneval",
        "repeats": config.n_samples,
        "generation_kwargs": {
            "until": list(STOP_STRINGS), "max_gen_toks": 512, "do_sample": True,
            "temperature": config.temperature or SAMPLING_TEMPERATURE, "top_p": SAMPLING_TOP_P,
        },
    }
    (directory / "humaneval.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return directory


def resolve_tasks(names: tuple[str, ...], include_path: Path | None, overrides: Path | None = None):
    """A TaskManager with the bundled tasks, after checking every requested name exists and its data is here."""
    from suntool.evals import bfcl_data
    from suntool.evals.registry import bundled_task_names, task_manager

    extra = [p for p in (include_path, overrides) if p is not None]
    manager = task_manager(extra or None, include_defaults=False)  # bundled + --include-path: fast
    unknown = [name for name in names if name not in set(manager.all_tasks)]
    if not unknown:
        check_task_data(names)
        return manager
    for name in unknown:
        if name.startswith("bfcl_"):
            bfcl_data.category_of(name)  # an unknown BFCL category: says which ones exist
    catalogue = set(task_manager(include_path, include_defaults=True).all_tasks)
    needs_download = [name for name in unknown if name in catalogue]
    missing = [name for name in unknown if name not in catalogue]
    if missing:
        known = set(manager.all_tasks)
        hints = "; ".join(f"{name}{_closest(name, known) or _closest(name, catalogue)}" for name in missing)
        raise SuntoolError(
            f"unknown task(s) {hints}; bundled offline tasks: {', '.join(bundled_task_names())}"
        )
    raise SuntoolError(
        f"lm-eval task(s) {', '.join(needs_download)} read their data from the Hugging Face hub, which is not "
        "available offline; download the data elsewhere, write task YAMLs that read it from local files "
        "(dataset_path: json, dataset_kwargs.data_files) and pass --include-path DIR"
    )


def _collect(results: dict) -> dict[str, MetricValue]:
    metrics: dict[str, MetricValue] = {}
    for task, values in sorted(results.get("results", {}).items()):
        for key, value in values.items():
            # Metrics are "name,filter"; keys without a filter ("sample_len", ...) are lm-eval's bookkeeping.
            if "," not in key or not isinstance(value, (int, float)) or "stderr" in key.split(",")[0]:
                continue
            metric, _, filter_name = key.partition(",")
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            label = f"{task}/{metric}" + (f"[{filter_name}]" if filter_name not in ("", "none") else "")
            metrics[label] = MetricValue(float(value), float(stderr) if isinstance(stderr, (int, float)) else None)
    return metrics


def artifact_labels(specs: list[str] | tuple[str, ...]) -> list[str]:
    """One row label per artifact: its directory name, or as many trailing path parts as it takes
    to tell it from the others (``program/sun``, ``arith/sun``); exact repeats get ``-2``, ``-3``."""
    parts = [Path(spec).parts or (spec,) for spec in specs]
    depth = [1] * len(specs)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    unique: list[str] = []
    for label in labels:
        candidate, count = label, 2
        while candidate in unique:
            candidate, count = f"{label}-{count}", count + 1
        unique.append(candidate)
    return unique


def run_eval(config: EvalConfig, progress: Progress | None = None, on_requests=None) -> EvalReport:
    """Evaluate every artifact of `config` on its tasks; see the module docstring.

    `on_requests(kind, done, total, tokens)`, if given, is called after every batch of requests
    (`suntool.lmeval.SuntoolLM.on_requests`).
    """
    from suntool.artifact import open_artifact

    say = progress or (lambda _msg: None)
    config.validate()
    for spec in config.artifacts:  # fail on a bad artifact before any model loads
        open_artifact(spec, allow_mismatch=config.allow_mismatch)
    if config.output is not None:
        check_output_dir(Path(config.output))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manager = resolve_tasks(config.tasks, config.include_path, _sampling_overrides(config))

    import lm_eval

    from suntool.lmeval import SuntoolLM

    report = EvalReport()
    for spec, label in zip(config.artifacts, artifact_labels(config.artifacts), strict=True):
        say(f"evaluating {label} on {', '.join(config.tasks)}")
        model = SuntoolLM(
            artifact=spec, dtype=config.dtype, batch_size=config.batch_size, allow_mismatch=config.allow_mismatch,
            engine=config.engine,
        )
        model.on_requests = on_requests
        chat = [t for t in config.tasks if t in CHAT_TASKS] if getattr(model.tokenizer, "chat_template", None) else []
        plain = [t for t in config.tasks if t not in chat]
        results: dict = {}
        for tasks, apply_chat_template in ((plain, False), (chat, True)):
            if not tasks:
                continue
            try:
                with _quiet_lm_eval():
                    part = lm_eval.simple_evaluate(
                        model=model,
                        tasks=tasks,
                        num_fewshot=config.num_fewshot,
                        limit=config.limit,
                        task_manager=manager,
                        log_samples=config.log_samples,
                        apply_chat_template=apply_chat_template,
                        use_cache=None if config.cache is None else str(Path(config.cache) / label.replace("/", "--")),
                        confirm_run_unsafe_code=True,  # humaneval runs completions in suntool.evals.sandbox
                        random_seed=config.seed,
                        numpy_random_seed=config.seed,
                        torch_random_seed=config.seed,
                        fewshot_random_seed=config.seed,
                    )
            except (ConnectionError, OSError) as err:
                raise SuntoolError(
                    f"a task's data is not available offline ({err}); bundled tasks work offline — for other lm-eval "
                    "tasks download their data elsewhere and point --include-path at YAMLs that read it locally"
                ) from err
            results = _merge_results(results, part)
        report.rows[label] = _collect(results)
        report.raw[label] = results
        if config.output is not None:
            _write_artifact_results(Path(config.output) / label, results, config.log_samples)
    if config.output is not None:
        _write_summary(Path(config.output), report, config)
    return report


def _merge_results(into: dict, part: dict) -> dict:
    """lm-eval results of two calls as one: per-task dicts merged, other fields from the first call."""
    merged = dict(into)
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key not in merged:
            merged[key] = value
    return merged


class _DropCustomKwargsNotice:
    """A logging filter dropping lm-eval's notice, for every task with a custom loader, about `--metadata`."""

    def filter(self, record) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


@contextmanager
def _quiet_lm_eval():
    """lm-eval without two noises: its `git describe` probe's `fatal: not a git repository` on stderr
    (the probe runs with stderr silenced; its answer is unchanged) and the custom-loader notice."""
    import logging
    import subprocess

    import lm_eval.evaluator
    import lm_eval.loggers.utils as logger_utils

    def git_commit_hash():
        try:
            output = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)  # noqa: S607
            return output.strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return logger_utils.get_commit_from_path(os.getcwd())

    saved = lm_eval.evaluator.get_git_commit_hash, logger_utils.get_git_commit_hash
    notice = _DropCustomKwargsNotice()
    task_logger = logging.getLogger("lm_eval.api.task")
    lm_eval.evaluator.get_git_commit_hash = logger_utils.get_git_commit_hash = git_commit_hash
    task_logger.addFilter(notice)
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash, logger_utils.get_git_commit_hash = saved
        task_logger.removeFilter(notice)


def _write_artifact_results(directory: Path, results: dict, log_samples: bool) -> None:
    from suntool.atomic import atomic_write_text

    samples = results.pop("samples", None)
    atomic_write_text(directory / "results.json", json.dumps(results, indent=2, default=str))
    if samples and log_samples:
        for task, rows in samples.items():
            lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
            atomic_write_text(directory / f"samples_{task}.jsonl", lines)


def _write_summary(directory: Path, report: EvalReport, config: EvalConfig) -> None:
    import yaml

    from suntool.atomic import atomic_write_text

    atomic_write_text(directory / "summary.md", report.markdown())
    atomic_write_text(directory / "summary.csv", report.csv())
    plain = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
             for k, v in asdict(config).items()}
    atomic_write_text(directory / "eval.yaml", yaml.safe_dump(plain, sort_keys=False))
