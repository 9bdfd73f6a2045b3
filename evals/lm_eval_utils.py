"""`process_results` hooks of the bundled lm-eval tasks; they delegate to the task scorers.

Referenced from `evals/lm_eval_tasks/*.yaml` as `!function suntool.evals.lm_eval_utils.<name>`
(an importable module, not a `utils.py` beside the YAML, so the YAMLs work from any directory
`registry.materialize_tasks` copies them to, and from a wheel). Each hook receives one dataset
row (`doc`, a record of the task's JSONL) and the filtered generations (`results`, one string
for `generate_until` with the default `take_first` filter) and returns `{"acc": 0.0 or 1.0}`.
Importing this module is cheap: no lm_eval, no torch.
"""

from __future__ import annotations

from suntool.evals.tasks import TASKS


def _acc(task: str, doc: dict, results: list) -> dict[str, float]:
    output = results[0] if results else ""
    return {"acc": float(TASKS[task].score(output if isinstance(output, str) else str(output), doc))}


def process_results_arith(doc: dict, results: list) -> dict[str, float]:
    """`acc` of `arith.score` on the first generation."""
    return _acc("arith", doc, results)


def process_results_program(doc: dict, results: list) -> dict[str, float]:
    """`acc` of `program.score` (sandboxed execution) on the first generation."""
    return _acc("program", doc, results)


def process_results_funcall(doc: dict, results: list) -> dict[str, float]:
    """`acc` of `funcall.score` on the first generation."""
    return _acc("funcall", doc, results)
