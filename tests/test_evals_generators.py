"""The synthetic generators: deterministic, distinct, and their answers are right (checked independently)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re

import pytest

from suntool.evals import arith, funcall, program
from suntool.evals.tasks import (
    ALL_TASKS,
    CHOICE_TASKS,
    TASKS,
    accuracy,
    read_jsonl,
    split_records,
    to_messages,
    write_split,
)


@pytest.mark.parametrize("name", sorted(ALL_TASKS))
def test_seeded_and_deterministic(name):
    task = ALL_TASKS[name]
    first = task.generate(40, 7)
    assert first == task.generate(40, 7)
    assert first != task.generate(40, 8)
    assert task.generate(15, 7) == first[:15]  # a prefix: the test split does not depend on n_train
    assert len({r["prompt"] for r in first}) == 40
    for record in first:
        assert isinstance(record["prompt"], str) and record["prompt"].strip()
        assert record["completion"].startswith(" ") and not record["completion"].startswith("  ")
        json.dumps(record)  # plain JSON


def test_registry_shape():
    assert set(TASKS) == {"arith", "program", "funcall"}
    assert set(CHOICE_TASKS) == {"arith_mc", "facts_mc"}
    for name, task in ALL_TASKS.items():
        assert task.name == name and task.stop_strings and all(isinstance(s, str) for s in task.stop_strings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["arith"].name = "x"


_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_arith_answers_recomputed_from_the_worked_solution():
    for record in arith.generate(300, 3):
        question = record["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
        lines = record["completion"].strip().splitlines()
        assert lines[-1] == f"#### {record['answer']}"
        steps = lines[:-1]
        assert 2 <= len(steps) <= 4, record
        known = {int(n) for n in re.findall(r"\d+", question)} | {2}  # 2: "as many again" doubles
        result = None
        for line in steps:
            (equation,) = _EQUATION.findall(line)
            a, op, b, c = int(equation[0]), equation[1], int(equation[2]), int(equation[3])
            assert a in known and b in known, (line, record["prompt"])
            assert _OPS[op](a, b) == c and c >= 0, line
            known.add(c)
            result = c
        assert result == record["answer"] and isinstance(record["answer"], int)


def test_arith_varies_templates_names_and_objects():
    records = arith.generate(300, 0)
    starts = {r["prompt"].split()[1:3][1] for r in records}  # "has", "buys", "saves", ...
    assert len(starts) >= 4
    assert len({n for r in records for n in re.findall(r"\b[A-Z][a-z]+\b", r["prompt"])}) >= 30
    assert {len(r["completion"].splitlines()) - 1 for r in records} == {2, 3, 4}


def test_program_answers_run_and_match_the_shown_example():
    records = program.generate(200, 5)
    for record in records:
        assert program.check_expression(record["expression"]) is None
        assert record["completion"] == " " + record["expression"]
        example = re.search(r"Example: xs = (\[.*\]) gives (.*)\nExpression:$", record["prompt"])
        xs, shown = ast.literal_eval(example.group(1)), ast.literal_eval(example.group(2))
        assert xs == record["test_inputs"][0] and len(record["test_inputs"]) >= 4
        # trusted reference code: plain Python is fine here
        assert eval(record["expression"], {"xs": list(xs)}) == shown  # noqa: S307
        outputs = [eval(record["expression"], {"xs": list(t)}) for t in record["test_inputs"]]  # noqa: S307
        assert any(out != outputs[0] for out in outputs)  # a constant answer cannot pass
    assert len({r["expression"].split("(")[0].split("[")[0] for r in records}) >= 4
    for record in records[:25]:  # through the sandbox
        assert program.score(record["completion"], record) == 1.0


_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


def test_funcall_expected_arguments_fit_the_schema_and_the_request():
    records = funcall.generate(300, 11)
    assert {r["name"] for r in records} == set(funcall.FUNCTIONS_BY_NAME)
    for record in records:
        offered = record["functions"]
        assert 2 <= len(offered) <= 4 and len(set(offered)) == len(offered)
        assert record["name"] in record["functions"]
        listing = record["prompt"].split("\n")[1:-2]
        assert [json.loads(line)["name"] for line in listing] == record["functions"]
        schema = funcall.FUNCTIONS_BY_NAME[record["name"]]["parameters"]
        arguments = json.loads(record["arguments"])
        assert set(schema["required"]) <= arguments.keys() <= schema["properties"].keys()
        request = record["prompt"].split("\nUser: ")[1].removesuffix("\nCall:")
        for key, value in arguments.items():
            spec = schema["properties"][key]
            assert isinstance(value, _TYPES[spec["type"]]), (key, value)
            if spec["type"] in ("integer", "number"):
                assert not isinstance(value, bool)
            if "enum" in spec:
                assert value in spec["enum"]
            if spec["type"] != "boolean":
                assert str(value) in request, (key, value, request)
        assert json.loads(record["completion"]) == {"name": record["name"], "arguments": arguments}


def test_multiple_choice_records():
    for name in CHOICE_TASKS:
        for record in CHOICE_TASKS[name].generate(200, 2):
            choices = record["choices"]
            assert len(choices) == 4 and len(set(choices)) == 4
            assert record["completion"] == " " + choices[record["label"]]
    for record in CHOICE_TASKS["arith_mc"].generate(100, 2):
        assert int(record["choices"][record["label"]]) == record["answer"]
        assert all(c.isdigit() for c in record["choices"])
    for record in CHOICE_TASKS["facts_mc"].generate(200, 2):
        facts, question = record["prompt"].removeprefix("Facts: ").split("\nQuestion: ")
        (who,) = re.findall(r"\b[A-Z][a-z]+\b(?='s|\s)", question.split(" ", 1)[1].replace("?", " "))[:1]
        sentences = [s for s in facts.split(". ") if s.startswith((who + " ", who + "'s "))]
        right = record["choices"][record["label"]]
        assert sum(bool(re.search(rf"\b{right}\b", s)) for s in sentences) == 1, (record, sentences)
        for wrong in (c for c in record["choices"] if c != right):
            assert not any(re.search(rf"\b{wrong}\b", s) for s in sentences)


def test_write_split_is_disjoint_and_atomic(tmp_path):
    paths = write_split("arith", tmp_path / "out", n_train=30, n_test=10, seed=4)
    # nothing but the two files: no temp file is left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.jsonl", "train.jsonl"]
    train, test = read_jsonl(paths["train"]), read_jsonl(paths["test"])
    assert len(train) == 30 and len(test) == 10
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert test == split_records("arith", 99, 10, 4)["test"]  # the test split ignores n_train
    assert test == arith.generate(40, 4)[:10]


def test_chat_rendering_and_accuracy():
    record = program.generate(1, 0)[0]
    chat = to_messages(record)
    assert chat == {
        "messages": [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["expression"]},
        ]
    }
    records = arith.generate(4, 0)
    outputs = [r["completion"] for r in records[:3]] + ["#### -1"]
    assert accuracy("arith", outputs, records) == 0.75
    assert accuracy(TASKS["arith"], outputs[:1], records[:1]) == 1.0
    with pytest.raises(ValueError):
        accuracy("arith", outputs[:2], records)
    with pytest.raises(KeyError, match="known"):
        accuracy("nope", outputs, records)
