"""Harder versions of the bundled synthetic tasks, for where the standard ones saturate.

`split(task, n_train, n_test)` returns (train records, test records) of the harder task, generated
deterministically (test = the first `n_test` records of one seeded stream, train = the next
`n_train`, so the splits never share a prompt and the test split does not depend on `n_train`),
in the same record format and scored by the same scorer as the standard task
(`suntool.evals.tasks.TASKS[task].score`).

- `program` (saturates at 1.000 after 50 steps): two of the task's expression families composed —
  a list-valued one computes `ys` from `xs`, a second one is applied to `ys` — so the program to
  write is the second reference expression with `xs` replaced by the first, e.g.
  `sorted([3 * x + 1 for x in xs])[:2]`. The prompt names both steps and shows one example.
- `arith` does not saturate (0.25-0.35 after 50 steps) and `funcall` has no harder variant here:
  asking for them is an error.
"""

from __future__ import annotations

import random
import re

SEED = 0
HARDER = ("program",)


def split(task: str, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    if task not in HARDER:
        from suntool.errors import SuntoolError

        raise SuntoolError(f"there is no harder variant of {task!r}; --difficulty hard applies to {', '.join(HARDER)}")
    from suntool.evals.common import distinct

    records = distinct(n_test + n_train, random.Random(f"suntool.examples/{task}-hard/{SEED}"), composed_program)
    return records[n_test:], records[:n_test]


def _compose(outer: str, inner: str) -> str:
    return re.sub(r"\bxs\b", f"({inner})", outer)


def composed_program(rng: random.Random) -> dict:
    """One record: `ys` = a list-valued family of `xs`, the answer = another family applied to `ys`."""
    from suntool.evals import program

    while True:
        inner_desc, inner = rng.choice(program.FAMILIES)(rng)
        outer_desc, outer = rng.choice(program.FAMILIES)(rng)
        expression = _compose(outer, inner)
        if len(expression) > program.MAX_EXPRESSION_CHARS or program.check_expression(expression) is not None:
            continue
        inputs = [program._random_list(rng, 5, 7)] + [program._random_list(rng, 6, 9) for _ in range(3)]
        try:
            middles = [program.reference_value(inner, xs) for xs in inputs]
            outputs = [program.reference_value(expression, xs) for xs in inputs]
        except (ValueError, TypeError, ZeroDivisionError, IndexError):  # e.g. max() of an empty ys
            continue
        if not all(isinstance(m, list) and len(m) >= 2 for m in middles):
            continue  # the inner step must give a list to work on
        plain = [program.reference_value(outer, xs) for xs in inputs] if _safe(outer, inputs) else None
        informative = outputs[0] != [] and any(out != outputs[0] for out in outputs)
        if informative and outputs != plain and outputs != middles:  # both steps matter
            break
    prompt = (
        f"Let ys be {inner_desc} of the list xs. Write a Python expression that uses the list xs and returns "
        f"{outer_desc}, computed on ys instead of xs.\nExample: xs = {inputs[0]} gives {outputs[0]}\nExpression:"
    )
    return {"prompt": prompt, "completion": " " + expression, "expression": expression, "test_inputs": inputs,
            "steps": [inner, outer]}


def _safe(expression: str, inputs) -> bool:
    from suntool.evals import program

    try:
        for xs in inputs:
            program.reference_value(expression, xs)
    except (ValueError, TypeError, ZeroDivisionError, IndexError):
        return False
    return True
