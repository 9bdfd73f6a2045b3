"""`arith_mc`: pick the answer of an `arith` word problem among 4 numbers (loglikelihood MC).

Record: `{"prompt": "Question: ...\\nFinal answer:", "completion": " <n>", "choices": [4 numeric
strings], "label": index of the right one, "answer": n}`; `prompt + completion` is the training
text. Distractors are plausible: intermediate results of the worked solution first, then
near misses (n +- 1, 2, 10); all four choices are distinct non-negative integers.

lm-eval scores it by comparing the loglikelihoods of `" " + choice`. For generated outputs,
`score` reads the first non-empty line's final number (as `arith.extract_answer` does) and
compares it with the right choice.
"""

from __future__ import annotations

import random

from suntool.evals import arith
from suntool.evals.common import distinct, task_rng

NAME = "arith_mc"
STOP_STRINGS = ("\n",)
N_CHOICES = 4


def _distractors(problem: arith.Problem, rng: random.Random) -> list[int]:
    answer = problem.answer
    near = [answer + d for d in (1, -1, 2, -2, 10, -10, 3, 5)]
    intermediates = [v for v in problem.values if v != answer]
    rng.shuffle(intermediates)
    picked: list[int] = []
    for value in intermediates[:2] + near:
        if value >= 0 and value != answer and value not in picked:
            picked.append(value)
        if len(picked) == N_CHOICES - 1:
            break
    return picked


def _record(rng: random.Random) -> dict:
    problem = arith.make_problem(rng)
    choices = [problem.answer, *_distractors(problem, rng)]
    rng.shuffle(choices)
    label = choices.index(problem.answer)
    return {
        "prompt": f"Question: {problem.question}\nFinal answer:",
        "completion": f" {problem.answer}",
        "choices": [str(c) for c in choices],
        "label": label,
        "answer": problem.answer,
    }


def generate(n: int, seed: int) -> list[dict]:
    """`n` distinct 4-way multiple-choice arithmetic records, the same for the same seed."""
    return distinct(n, task_rng(NAME, seed), _record)


def score(output: str, record: dict) -> float:
    """1.0 iff the final number of the output's first non-empty line is the right choice."""
    line = next((ln for ln in output.splitlines() if ln.strip()), "")
    value = arith.extract_answer(line)
    return 1.0 if value is not None and value == int(record["choices"][record["label"]]) else 0.0
