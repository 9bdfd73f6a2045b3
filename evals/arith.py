"""`arith`: multi-step arithmetic word problems with one integer answer (GSM8K-like).

Record: `{"prompt": "Question: ...\\nAnswer:", "completion": " <worked solution>\\n#### <n>",
"answer": n}`; `prompt + completion` is the training text. The worked solution has one line per
arithmetic step (2 to 4 steps), each containing exactly one equation `a <op> b = c` with
op in `+ - * /`; the last step's result is the answer, a non-negative integer; every
intermediate is a non-negative integer too (divisions are exact).

Scoring (`score`): the final number of a model's output (`extract_answer`: the first number
after the first `####` if there is one, else the last number in the text; `1,200`, `$12`,
`12.0` are read as numbers) must equal the record's `answer` exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from suntool.evals.common import distinct, person, task_rng

NAME = "arith"
STOP_STRINGS = ("\n\n", "Question:")

OBJECTS = (
    "marbles", "stickers", "pencils", "cookies", "books", "shells", "cards", "stamps", "beads",
    "balloons", "apples", "oranges", "crayons", "coins", "flowers", "cupcakes", "postcards",
    "toy cars", "erasers", "buttons",
)  # fmt: skip
CONTAINERS = ("bags", "boxes", "packs", "jars")
RELATIVES = ("grandmother", "uncle", "aunt", "older sister", "older brother", "neighbor")
ITEMS = (  # (plural, lowest price, highest price) in whole dollars
    ("notebooks", 2, 6), ("pens", 1, 3), ("sandwiches", 3, 8), ("movie tickets", 5, 12),
    ("muffins", 2, 4), ("comic books", 3, 9), ("plants", 4, 10), ("bottles of juice", 1, 4),
    ("pairs of socks", 2, 5), ("bus passes", 3, 7),
)  # fmt: skip
PURCHASES = ("a book", "a board game", "a pair of shoes", "a scooter", "a jacket", "a lamp")
TREATS = ("muffins", "cookies", "rolls", "pies", "cupcakes", "bagels")


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[str, ...]  # one worked line per arithmetic step
    answer: int
    values: tuple[int, ...]  # every operand and result that appears in the steps


class _Solver:
    """Collects worked steps; each call performs one exact integer operation."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.values: list[int] = []

    def step(self, template: str, a: int, op: str, b: int) -> int:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            if b == 0 or a % b:
                raise ValueError(f"inexact division {a} / {b}")
            result = a // b
        else:
            raise ValueError(op)
        if result < 0:
            raise ValueError(f"negative intermediate {a} {op} {b}")
        self.steps.append(template.format(eq=f"{a} {op} {b} = {result}"))
        self.values += [a, b, result]
        return result


def _divisors(n: int, low: int = 2, high: int = 6) -> list[int]:
    return [k for k in range(low, high + 1) if n % k == 0 and n // k >= 2]


def _inventory(rng: random.Random) -> Problem:
    """A running count of objects changed by 2-4 events, maybe shared out at the end."""
    p = person(rng)
    friend = person(rng, exclude=(p.name,))
    obj = rng.choice(OBJECTS)
    n_steps = rng.randint(2, 4)
    value = rng.randint(6, 40)
    story = [f"{p.name} has {value} {obj}."]
    solver = _Solver()
    question = f"How many {obj} does {p.name} have {rng.choice(('now', 'at the end', 'in total now'))}?"
    done = 0
    while done < n_steps:
        left = n_steps - done
        kinds = ["add", "sub"]
        if left >= 2:
            kinds.append("packs")
        if value <= 30:
            kinds.append("double")
        if left == 1 and done >= 1 and _divisors(value):
            kinds.append("share")
        kind = rng.choice(kinds)
        if kind == "add":
            b = rng.randint(2, 25)
            story.append(
                rng.choice(
                    (
                        f"{p.Subject} buys {b} more {obj}.",
                        f"{friend.name} gives {p.object} {b} more {obj}.",
                        f"{p.Subject} finds {b} more {obj}.",
                    )
                )
            )
            value = solver.step(f"After getting {b} more, {p.subject} has {{eq}}.", value, "+", b)
            done += 1
        elif kind == "sub":
            if value < 4:
                continue
            b = rng.randint(1, min(value - 1, 20))
            verb, phrase = rng.choice(
                (
                    (f"{p.Subject} gives {b} {obj} to {friend.name}.", "giving away"),
                    (f"{p.Subject} loses {b} {obj}.", "losing"),
                    (f"{p.Subject} uses {b} of the {obj} for a school project.", "using"),
                )
            )
            story.append(verb)
            value = solver.step(f"After {phrase} {b}, {p.subject} has {{eq}}.", value, "-", b)
            done += 1
        elif kind == "packs":
            k, m = rng.randint(2, 5), rng.randint(2, 12)
            container = rng.choice(CONTAINERS)
            story.append(f"{p.Subject} buys {k} {container} of {obj} with {m} {obj} in each.")
            extra = solver.step(f"The {container} hold {{eq}} {obj}.", k, "*", m)
            value = solver.step(f"So {p.subject} has {{eq}}.", value, "+", extra)
            done += 2
        elif kind == "double":
            relative = rng.choice(RELATIVES)
            story.append(
                f"{p.Possessive} {relative} gives {p.object} as many {obj} as {p.subject} already has."
            )
            value = solver.step("Getting as many again doubles the count: {eq}.", value, "*", 2)
            done += 1
        else:  # share: always the last step
            k = rng.choice(_divisors(value))
            group = rng.choice(("friends", "classmates", "cousins"))
            story.append(f"{p.Subject} shares all the {obj} equally among {k} {group}.")
            question = f"How many {obj} does each of the {group} get?"
            value = solver.step("Each one gets {eq}.", value, "/", k)
            done += 1
    return Problem(" ".join(story) + " " + question, tuple(solver.steps), value, tuple(solver.values))


def _shopping(rng: random.Random) -> Problem:
    """Buying one or two kinds of items, maybe paying with a bill and getting change."""
    p = person(rng)
    (item1, lo1, hi1), (item2, lo2, hi2) = rng.sample(ITEMS, 2)
    n1, p1 = rng.randint(2, 6), rng.randint(lo1, hi1)
    shape = rng.choice(("extra", "change1", "two", "two_change"))
    solver = _Solver()
    t1 = solver.step(f"The {item1} cost {{eq}} dollars.", n1, "*", p1)
    if shape == "extra":
        cost = rng.randint(3, 20)
        thing = rng.choice(PURCHASES)
        story = f"{p.name} buys {n1} {item1} for ${p1} each and {thing} for ${cost}."
        total = solver.step(f"Adding {thing}, {p.subject} spends {{eq}} dollars.", t1, "+", cost)
        return Problem(
            f"{story} How many dollars does {p.name} spend in total?", tuple(solver.steps), total,
            tuple(solver.values),
        )  # fmt: skip
    if shape == "change1":
        bill = next(b for b in (10, 20, 50, 100) if b > t1)
        story = f"{p.name} buys {n1} {item1} for ${p1} each and pays with a ${bill} bill."
        change = solver.step(f"{p.Subject} gets {{eq}} dollars in change.", bill, "-", t1)
        return Problem(
            f"{story} How many dollars of change does {p.subject} get?", tuple(solver.steps), change,
            tuple(solver.values),
        )  # fmt: skip
    n2, p2 = rng.randint(2, 6), rng.randint(lo2, hi2)
    story = f"{p.name} buys {n1} {item1} for ${p1} each and {n2} {item2} for ${p2} each."
    t2 = solver.step(f"The {item2} cost {{eq}} dollars.", n2, "*", p2)
    total = solver.step(f"In total {p.subject} spends {{eq}} dollars.", t1, "+", t2)
    if shape == "two":
        return Problem(
            f"{story} How many dollars does {p.name} spend?", tuple(solver.steps), total, tuple(solver.values)
        )
    bill = next(b for b in (20, 50, 100, 200) if b > total)
    change = solver.step(f"{p.Subject} gets {{eq}} dollars in change.", bill, "-", total)
    question = f"{p.Subject} pays with a ${bill} bill. How many dollars of change does {p.subject} get?"
    return Problem(f"{story} {question}", tuple(solver.steps), change, tuple(solver.values))


def _saving(rng: random.Random) -> Problem:
    """Weekly savings, maybe a gift, maybe a purchase."""
    p = person(rng)
    s, w = rng.randint(2, 15), rng.randint(2, 8)
    solver = _Solver()
    story = [f"{p.name} saves ${s} every week for {w} weeks."]
    money = solver.step("After the weeks of saving, {eq} dollars.", s, "*", w)
    shape = rng.choice(("gift", "spend", "both"))
    if shape in ("gift", "both"):
        g = rng.randint(5, 30)
        story.append(f"{p.Possessive} {rng.choice(RELATIVES)} adds ${g}.")
        money = solver.step("With the gift: {eq} dollars.", money, "+", g)
    if shape in ("spend", "both"):
        c = rng.randint(1, money - 1)
        thing = rng.choice(PURCHASES)
        story.append(f"Then {p.subject} spends ${c} on {thing}.")
        money = solver.step(f"After buying {thing}: {{eq}} dollars.", money, "-", c)
    story.append(f"How many dollars does {p.name} have now?")
    return Problem(" ".join(story), tuple(solver.steps), money, tuple(solver.values))


def _reading(rng: random.Random) -> Problem:
    """Pages read per day, maybe extra pages, pages left in the book."""
    p = person(rng)
    per_day, days = rng.randint(5, 25), rng.randint(2, 7)
    solver = _Solver()
    story = [f"{p.name} reads {per_day} pages every day for {days} days."]
    read = solver.step(f"In {days} days {p.subject} reads {{eq}} pages.", per_day, "*", days)
    if rng.random() < 0.5:
        extra = rng.randint(5, 30)
        story.append(f"On the weekend {p.subject} reads {extra} more pages.")
        read = solver.step("With the weekend: {eq} pages.", read, "+", extra)
    total = read + rng.randint(10, 120)
    story.insert(0, f"A book has {total} pages.")
    story.append(f"How many pages does {p.name} still have to read?")
    left = solver.step("Pages left: {eq}.", total, "-", read)
    return Problem(" ".join(story), tuple(solver.steps), left, tuple(solver.values))


def _baking(rng: random.Random) -> Problem:
    """Trays of treats, some sold or given away, maybe boxed up."""
    p = person(rng)
    treat = rng.choice(TREATS)
    trays, per_tray = rng.randint(2, 6), rng.randint(4, 12)
    solver = _Solver()
    story = [f"{p.name} bakes {trays} trays of {treat} with {per_tray} {treat} on each tray."]
    count = solver.step(f"{p.Subject} bakes {{eq}} {treat}.", trays, "*", per_tray)
    sold = rng.randint(1, count // 2)
    story.append(f"{p.Subject} sells {sold} of them.")
    count = solver.step("After selling, {eq} are left.", count, "-", sold)
    question = f"How many {treat} are left?"
    if rng.random() < 0.5:
        given = rng.randint(1, count - 1)
        story.append(f"{p.Subject} gives {given} to {p.possessive} {rng.choice(RELATIVES)}.")
        count = solver.step("After giving some away, {eq} are left.", count, "-", given)
    if rng.random() < 0.5 and _divisors(count):
        k = rng.choice(_divisors(count))
        story.append(f"{p.Subject} packs the rest into boxes of {k}.")
        question = "How many boxes does " + p.subject + " fill?"
        count = solver.step("The boxes: {eq}.", count, "/", k)
    story.append(question)
    return Problem(" ".join(story), tuple(solver.steps), count, tuple(solver.values))


FAMILIES = (_inventory, _shopping, _saving, _reading, _baking)


def make_problem(rng: random.Random) -> Problem:
    """One word problem with 2 to 4 steps (also the question source of `arith_mc`)."""
    return rng.choice(FAMILIES)(rng)


def _record(rng: random.Random) -> dict:
    problem = make_problem(rng)
    solution = "\n".join(problem.steps) + f"\n#### {problem.answer}"
    return {
        "prompt": f"Question: {problem.question}\nAnswer:",
        "completion": " " + solution,
        "answer": problem.answer,
    }


def generate(n: int, seed: int) -> list[dict]:
    """`n` distinct word-problem records, the same for the same seed."""
    return distinct(n, task_rng(NAME, seed), _record)


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def _to_number(text: str) -> float:
    return float(text.replace(",", ""))


def extract_answer(output: str) -> float | None:
    """The final number of a model's output: first number after `####`, else the last number."""
    if "####" in output:
        match = _NUMBER.search(output.split("####", 1)[1])
        return _to_number(match.group()) if match else None
    numbers = _NUMBER.findall(output)
    return _to_number(numbers[-1]) if numbers else None


def score(output: str, record: dict) -> float:
    """1.0 iff the output's final number equals the record's integer answer."""
    value = extract_answer(output)
    return 1.0 if value is not None and value == int(record["answer"]) else 0.0
