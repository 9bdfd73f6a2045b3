"""The scorers accept right answers inside realistic noisy outputs and reject wrong or unsafe ones."""

from __future__ import annotations

import json
import time

import pytest

from suntool.evals import arith, arith_mc, facts_mc, funcall, program

ARITH = {"prompt": "Question: ...\nAnswer:", "completion": " ...\n#### 1200", "answer": 1200}


@pytest.mark.parametrize(
    "output",
    [
        " 12 * 100 = 1200.\n#### 1200",
        "#### 1,200\n\nQuestion: Tom has 3 apples ... #### 7",
        "She has 1200 - 0 = 1200 coins.\n####1200",
        "The answer is $1,200.",
        "So the total is 1200.0",
        "5 + 5 = 10, then 10 * 120 = 1200",
    ],
)
def test_arith_accepts(output):
    assert arith.score(output, ARITH) == 1.0


@pytest.mark.parametrize(
    "output",
    [
        "#### 1201",
        "1200 apples, then she gives 3 away: 1197",
        "#### twelve hundred",
        "",
        "#### 120",
        "#### 12000",
    ],
)
def test_arith_rejects(output):
    assert arith.score(output, ARITH) == 0.0


def test_arith_extracts():
    assert arith.extract_answer("#### -3") == -3
    assert arith.extract_answer("no numbers") is None
    assert arith.extract_answer("#### ") is None


@pytest.fixture(scope="module")
def sort_record():
    return next(r for r in program.generate(400, 1) if r["expression"] == "sorted(xs)")


@pytest.mark.parametrize(
    "output",
    [
        " sorted(xs)",
        "```python\nsorted(xs)\n```",
        "Expression: `sorted(xs)`",
        "lambda xs: sorted(xs)",
        "return sorted(xs)\n\nWrite a Python expression",
        "result = sorted(list(xs))",
        "sorted(xs, key=lambda x: x)",
        "list(reversed(sorted(xs, reverse=True)))",
        "tuple(sorted(xs))",
    ],
)
def test_program_accepts_equivalent_expressions(output, sort_record):
    assert program.score(output, sort_record) == 1.0


@pytest.mark.parametrize(
    "output",
    [
        "sorted(xs, reverse=True)",
        "xs",
        "set(xs)",
        "sorted(xs)[1:]",
        "xs.sort()",
        "__import__('os').system('touch /tmp/pwned')",
        "open('/etc/passwd').read()",
        "[c for c in ().__class__.__base__.__subclasses__()]",
        "eval('1')",
        "sorted(xs) if len(xs) < 100 else 2 ** 100000000",
        "'abc'",
        "sorted(xs",
        "",
        "I think you should sort the list.",
    ],
)
def test_program_rejects_wrong_and_unsafe(output, sort_record):
    assert program.score(output, sort_record) == 0.0


def test_program_whitelist_reasons():
    assert program.check_expression("sorted(xs)[:3]") is None
    assert "Attribute" in program.check_expression("xs.__class__")
    assert "Pow" in program.check_expression("2 ** 10")
    assert "calls" in program.check_expression("print(xs)")
    assert "name" in program.check_expression("__builtins__")
    assert "constant" in program.check_expression("xs + [10000000]")
    assert "longer" in program.check_expression("x" * 400)


def test_program_sandbox_limits_time_and_memory():
    inputs = [[3, 1, 2]]
    start = time.monotonic()
    slow = "[x for x in range(1000000) for y in range(1000000)]"
    assert program.check_expression(slow) is None  # allowed by the AST check, stopped by the sandbox
    assert program.run_sandboxed(slow, "xs", inputs, timeout_s=1.0) is False
    assert time.monotonic() - start < 3.0
    assert program.run_sandboxed("[0] * 1000000 * 1000000", "xs", inputs) is False  # memory limit
    assert program.run_sandboxed("xs[::-1][::-1]", "xs", inputs) is True


CURRENCY = '"from_currency": "USD", "to_currency": "EUR"'
CALL = {
    "name": "convert_currency",
    "arguments": json.dumps({"amount": 12.5, "from_currency": "USD", "to_currency": "EUR"}),
    "functions": ["convert_currency", "get_weather"],
}
WEATHER = {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"}), "functions": ["get_weather"]}


@pytest.mark.parametrize(
    "output",
    [
        ' {"name": "convert_currency", "arguments": {"amount": 12.5, ' + CURRENCY + "}}",
        'Sure! ```json\n{"name": "convert_currency",\n "arguments": {"to_currency": "EUR", "amount": 12.50,'
        ' "from_currency": "USD"}}\n```',
        '{"name": "convert_currency", "arguments": "{\\"amount\\": 12.5, \\"from_currency\\": \\"USD\\",'
        ' \\"to_currency\\": \\"EUR\\"}"}',
        '{"bad json" {"name": "convert_currency", "parameters": {"amount": 12.5, "from_currency": "USD",'
        ' "to_currency": "EUR"}}\nUser: thanks',
    ],
)
def test_funcall_accepts(output):
    assert funcall.score(output, CALL) == 1.0


@pytest.mark.parametrize(
    "output",
    [
        '{"name": "get_weather", "arguments": {"amount": 12.5, ' + CURRENCY + "}}",
        '{"name": "convert_currency", "arguments": {"amount": "12.5", ' + CURRENCY + "}}",
        '{"name": "convert_currency", "arguments": {"amount": 12.5, "from_currency": "USD"}}',
        '{"name": "convert_currency", "arguments": {"amount": 12.5, "from_currency": "EUR",'
        ' "to_currency": "USD"}}',  # swapped currencies
        '{"name": "convert_currency", "arguments": {"amount": 12.5, ' + CURRENCY + ', "fee": 0}}',
        "{'name': 'convert_currency', 'arguments': {'amount': 12.5}}",
        "convert_currency(amount=12.5, from_currency='USD', to_currency='EUR')",
        "",
    ],
)
def test_funcall_rejects(output):
    assert funcall.score(output, CALL) == 0.0


def test_funcall_types_and_defaults():
    # an optional argument given at its declared default is fine
    ok = '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}'
    assert funcall.score(ok, WEATHER) == 1.0
    assert funcall.score(ok.replace("celsius", "fahrenheit"), WEATHER) == 0.0
    table = {"restaurant": "X", "party_size": 4, "time": "19:30"}
    party = {"name": "book_table", "arguments": json.dumps(table)}
    right = '{"name": "book_table", "arguments": {"restaurant": "X", "party_size": 4, "time": "19:30"}}'
    assert funcall.score(right, party) == 1.0
    assert funcall.score(right.replace(": 4", ": 4.0"), party) == 0.0  # integer params need ints
    assert funcall.score(right.replace(": 4", ": true"), party) == 0.0
    song = {"name": "play_song", "arguments": json.dumps({"title": "A", "shuffle": True})}
    assert funcall.score('{"name": "play_song", "arguments": {"title": "A", "shuffle": true}}', song) == 1.0
    assert funcall.score('{"name": "play_song", "arguments": {"title": "A", "shuffle": 1}}', song) == 0.0


def test_choice_scorers_for_generated_outputs():
    record = {"choices": ["15", "45", "18", "19"], "label": 2}
    assert arith_mc.score(" 18", record) == 1.0
    assert arith_mc.score("The answer is 18.\n\nQuestion: 45", record) == 1.0
    assert arith_mc.score(" 19", record) == 0.0
    assert arith_mc.score("\n45\n18", record) == 0.0
    facts = {"choices": ["Oslo", "Lima", "Rome", "Paris"], "label": 1}
    assert facts_mc.score(" Lima", facts) == 1.0
    assert facts_mc.score("\nTom lives in lima.\nQuestion: Where does Mia live? Oslo", facts) == 1.0
    assert facts_mc.score(" Lima or Oslo", facts) == 0.0
    assert facts_mc.score(" Limassol", facts) == 0.0
    assert facts_mc.score("", facts) == 0.0
