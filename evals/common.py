"""Shared pieces of the synthetic generators: seeded RNGs, distinct sampling, people and pools.

Contract: `task_rng(task, seed)` gives the same `random.Random` stream for the same (task, seed)
on every run and platform (string seeds are hashed with SHA-512 by `random`, not with the
per-process `hash()`), and different streams for different tasks. `distinct(n, rng, make)`
draws records until `n` have pairwise different prompts, so splits never overlap; its output
for `n` is a prefix of its output for any larger `n`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def task_rng(task: str, seed: int) -> random.Random:
    """The RNG of one task's generator for one seed."""
    return random.Random(f"suntool.evals/{task}/{int(seed)}")


def distinct(n: int, rng: random.Random, make: Callable[[random.Random], dict]) -> list[dict]:
    """`n` records from `make(rng)` with pairwise distinct `prompt`s, in draw order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seen: set[str] = set()
    records: list[dict] = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could only draw {len(records)} distinct records of the {n} asked for")
        record = make(rng)
        if record["prompt"] in seen:
            continue
        seen.add(record["prompt"])
        records.append(record)
    return records


@dataclass(frozen=True)
class Person:
    name: str
    subject: str  # she / he
    object: str  # her / him
    possessive: str  # her / his

    @property
    def Subject(self) -> str:  # noqa: N802 - the capitalised form, for sentence starts
        return self.subject.capitalize()

    @property
    def Possessive(self) -> str:  # noqa: N802
        return self.possessive.capitalize()


FEMALE_NAMES = (
    "Ana", "Mia", "Zoe", "Lena", "Sara", "Emma", "Nora", "Ivy", "Rosa", "Lucy",
    "Maya", "Ella", "Hana", "Priya", "Aisha", "Chloe", "Fatima", "Grace", "Julia", "Yuki",
)  # fmt: skip
MALE_NAMES = (
    "Ben", "Tom", "Leo", "Sam", "Omar", "Raj", "Max", "Hugo", "Ivan", "Kai",
    "Noah", "Luis", "Jack", "Eli", "Theo", "Diego", "Felix", "Ken", "Marco", "Pavel",
)  # fmt: skip


def person(rng: random.Random, exclude: tuple[str, ...] = ()) -> Person:
    """A random person (name and pronouns) whose name is not in `exclude`."""
    while True:
        if rng.random() < 0.5:
            name, forms = rng.choice(FEMALE_NAMES), ("she", "her", "her")
        else:
            name, forms = rng.choice(MALE_NAMES), ("he", "him", "his")
        if name not in exclude:
            return Person(name, *forms)


def people(rng: random.Random, k: int) -> list[Person]:
    """`k` people with distinct names."""
    chosen: list[Person] = []
    while len(chosen) < k:
        chosen.append(person(rng, exclude=tuple(p.name for p in chosen)))
    return chosen


CITIES = (
    "Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Toronto", "Sydney", "Madrid", "Nairobi", "Seoul",
    "Berlin", "Mumbai", "Dublin", "Quito", "Hanoi", "Lisbon", "Vienna", "Denver", "Accra", "Perth",
)  # fmt: skip
