"""`facts_mc`: answer a question about facts stated in the prompt, among 4 choices (MC).

Record: `{"prompt": "Facts: ...\\nQuestion: ...\\nAnswer:", "completion": " <value>",
"choices": [4 strings], "label": index of the right one}`; `prompt + completion` is the
training text. Each prompt states two attributes (e.g. city and pet) for 3-4 people, in shuffled
order, and asks for one attribute of one person; the choices are that attribute's values for
the other people plus unused values, so every choice is plausible and only reading the facts
decides. It tests retrieval from the prompt, which is what the prefill half has to hand over.

lm-eval scores it by loglikelihood of `" " + choice`. For generated outputs, `score` is 1.0
iff the first non-empty line mentions the right choice and no other choice (whole words,
case-insensitive).
"""

from __future__ import annotations

import random
import re

from suntool.evals.common import CITIES, distinct, people, task_rng

NAME = "facts_mc"
STOP_STRINGS = ("\n",)
N_CHOICES = 4

# (fact template, question template, value pool)
RELATIONS = (
    ("{n} lives in {v}.", "Where does {n} live?", CITIES),
    ("{n} has a pet {v}.", "What pet does {n} have?",
     ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "lizard", "ferret")),
    ("{n}'s favorite color is {v}.", "What is {n}'s favorite color?",
     ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink")),
    ("{n} works as a {v}.", "What is {n}'s job?",
     ("teacher", "nurse", "pilot", "chef", "baker", "lawyer", "farmer", "plumber", "dentist")),
    ("{n} plays the {v}.", "Which instrument does {n} play?",
     ("piano", "violin", "guitar", "flute", "drums", "cello", "trumpet", "harp", "banjo")),
    ("{n} likes to eat {v}.", "What does {n} like to eat?",
     ("pears", "plums", "mangos", "grapes", "lemons", "cherries", "figs", "melons", "kiwis")),
)  # fmt: skip


def _record(rng: random.Random) -> dict:
    asked, other = rng.sample(RELATIONS, 2)
    group = people(rng, rng.randint(3, 4))
    asked_values = rng.sample(asked[2], N_CHOICES)  # distinct; the spare ones fill the choices
    other_values = rng.sample(other[2], len(group))
    facts = [asked[0].format(n=p.name, v=v) for p, v in zip(group, asked_values, strict=False)]
    facts += [other[0].format(n=p.name, v=v) for p, v in zip(group, other_values, strict=True)]
    rng.shuffle(facts)
    target = rng.randrange(len(group))
    choices = list(asked_values)
    rng.shuffle(choices)
    question = asked[1].format(n=group[target].name)
    return {
        "prompt": f"Facts: {' '.join(facts)}\nQuestion: {question}\nAnswer:",
        "completion": f" {asked_values[target]}",
        "choices": choices,
        "label": choices.index(asked_values[target]),
    }


def generate(n: int, seed: int) -> list[dict]:
    """`n` distinct 4-way multiple-choice fact-retrieval records, the same for the same seed."""
    return distinct(n, task_rng(NAME, seed), _record)


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text) is not None


def score(output: str, record: dict) -> float:
    """1.0 iff the first non-empty line of `output` names the right choice and no other."""
    line = next((ln.strip().lower() for ln in output.splitlines() if ln.strip()), "")
    right = record["choices"][record["label"]]
    wrong = [c for i, c in enumerate(record["choices"]) if i != record["label"]]
    return 1.0 if _mentions(line, right) and not any(_mentions(line, c) for c in wrong) else 0.0
