"""BFCL v4 Python AST categories: data, prompts, and hand-made verdicts of suntool's port of BFCL's checker.

`CASES` are hand-made model outputs with the verdict BFCL's rules give them (written by hand, and
checked against BFCL's own checker by tests/test_bfcl_interop.py in .venv-bfcl).
"""

from __future__ import annotations

import json
import zipfile

import pytest

from suntool.errors import SuntoolError
from suntool.evals import bfcl, bfcl_ast, bfcl_data

AREA = {
    "name": "calculate_triangle_area",
    "description": "Calculate the area of a triangle given its base and height.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer", "description": "The base of the triangle."},
            "height": {"type": "integer", "description": "The height of the triangle."},
            "unit": {"type": "string", "description": "The unit of measure (defaults to 'units')"},
        },
        "required": ["base", "height"],
    },
}
FACTORIAL = {
    "name": "math.factorial",
    "description": "Calculate the factorial of a given number.",
    "parameters": {"type": "dict", "properties": {"number": {"type": "integer"}}, "required": ["number"]},
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "parameters": {
        "type": "dict",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}
STATS = {
    "name": "stats.mean",
    "description": "Mean of numbers, with options.",
    "parameters": {
        "type": "dict",
        "properties": {
            "numbers": {"type": "array", "items": {"type": "integer"}},
            "scale": {"type": "float"},
            "exact": {"type": "boolean"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "dict", "properties": {}},
        },
        "required": ["numbers"],
    },
}
AREA_GT = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
FACT_GT = [{"math.factorial": {"number": [5]}}]
WEATHER_GT = [
    {"get_weather": {"city": ["Paris"], "unit": ["celsius", ""]}},
    {"get_weather": {"city": ["Tokyo"], "unit": ["celsius", ""]}},
]
MIXED_GT = [{"get_weather": {"city": ["Paris"], "unit": ["", "celsius"]}}, {"math.factorial": {"number": [5]}}]
STATS_GT = [{
    "stats.mean": {
        "numbers": [[1, 2, 3]], "scale": [2.0, ""], "exact": [True, ""], "labels": [["New York", "LA"], ""],
        "options": [{"mode": ["fast"], "seed": [1, ""]}, ""],
    }
}]  # fmt: skip

# (category, functions, ground truth, model output, valid?)
CASES = [
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=5)]", True),
    ("simple_python", [AREA], AREA_GT, "calculate_triangle_area(base=10, height=5, unit='units')", True),
    ("simple_python", [AREA], AREA_GT, "```\n[calculate_triangle_area(base=10, height=5)]\n```", True),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=5*2, height=5)]", True),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=5, unit='Units')]", True),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(height=5, base=10)]", True),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base='10', height=5)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10.0, height=5)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=5, color='red')]", False),
    ("simple_python", [AREA], AREA_GT,
     "[calculate_triangle_area(base=10, height=5), calculate_triangle_area(base=1, height=2)]", False),
    ("simple_python", [AREA], AREA_GT, "[triangle_area(base=10, height=5)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=6)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=5, unit='meters')]", False),
    ("simple_python", [AREA], AREA_GT, "The area is 25 square units.", False),
    ("simple_python", [AREA], AREA_GT, "", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(10, 5)]", False),
    ("simple_python", [AREA], AREA_GT, "[calculate_triangle_area(base=10, height=5)] I hope this helps", False),
    ("simple_python", [FACTORIAL], FACT_GT, "[math.factorial(number=5)]", True),
    ("simple_python", [FACTORIAL], FACT_GT, "[math_factorial(number=5)]", False),
    ("simple_python", [FACTORIAL], FACT_GT, "[math.factorial(number=+5)]", False),  # BFCL: a unary op negates
    ("simple_python", [FACTORIAL], FACT_GT, "[math.factorial(number=lambda: 5)]", False),
    ("simple_python", [FACTORIAL], FACT_GT, "[math.factorial(number=n)]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3])]", True),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], scale=2)]", True),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], scale=2.5)]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], exact=True)]", True),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], exact='true')]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=(1, 2, 3))]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2])]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=['1', '2', '3'])]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], labels=['new york', 'L.A.'])]", True),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], labels=['LA', 'New York'])]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], options={'mode': 'Fast'})]", True),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], options={'mode': 'fast', 'x': 1})]", False),
    ("simple_python", [STATS], STATS_GT, "[stats.mean(numbers=[1, 2, 3], options={'seed': 1})]", False),
    ("multiple", [AREA, FACTORIAL], FACT_GT, "[math.factorial(number=5)]", True),
    ("multiple", [AREA, FACTORIAL], FACT_GT, "[calculate_triangle_area(base=10, height=5)]", False),
    ("multiple", [AREA, FACTORIAL], FACT_GT, "[math.factorial(number=5), math.factorial(number=5)]", False),
    ("multiple", [AREA, FACTORIAL], FACT_GT, "[]", False),
    ("parallel", [WEATHER], WEATHER_GT, "[get_weather(city='Tokyo'), get_weather(city='Paris')]", True),
    ("parallel", [WEATHER], WEATHER_GT, "[get_weather(city='paris', unit='celsius'), get_weather(city='TOKYO')]", True),
    ("parallel", [WEATHER], WEATHER_GT, "[get_weather(city='Paris')]", False),
    ("parallel", [WEATHER], WEATHER_GT, "[get_weather(city='Paris'), get_weather(city='Paris')]", False),
    ("parallel", [WEATHER], WEATHER_GT,
     "[get_weather(city='Paris'), get_weather(city='Tokyo'), get_weather(city='Oslo')]", False),
    ("parallel", [WEATHER], WEATHER_GT, "[get_weather(city='Paris'), get_weather(city='Tokyo', unit='kelvin')]", False),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT, "[math.factorial(number=5), get_weather(city='Paris')]",
     True),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT,
     "[get_weather(city='Paris'), math.factorial(number='5')]", False),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT,
     "[get_weather(city='Paris'), math.factorial(number=5)]\nThese calls answer both questions.", False),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT,
     "[get_weather(city='Paris'); math.factorial(number=5)]", False),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT, "[get_weather(city=city), math.factorial(number=5)]",
     False),
    ("parallel_multiple", [WEATHER, FACTORIAL], MIXED_GT, "[get_weather(city='Paris'), math.factorial(number=10//2)]",
     True),
]  # fmt: skip


def _first_allowed(value):
    """An answer's dict {key: [allowed...]} (or a list of such) as one concrete value."""
    if isinstance(value, dict):
        return {k: _first_allowed(next(v for v in vs if v != "")) for k, vs in value.items() if vs != [""]}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [_first_allowed(item) for item in value]
    return value


def gold_call(ground_truth: list, spoil: bool = False) -> str:
    """A call string for a BFCL answer: every answer parameter that has a value, given its first allowed
    value (what BFCL accepts, but for a few inconsistent entries); `spoil` replaces the first one by 'zzz'."""
    calls = []
    for call in ground_truth:
        ((name, params),) = call.items()
        args = [f"{key}={_first_allowed(next(v for v in values if v != ''))!r}"
                for key, values in params.items() if any(v != "" for v in values)]  # fmt: skip
        if spoil and args and not calls:
            args[0] = args[0].split("=", 1)[0] + "='zzz'"
        calls.append(f"{name}({', '.join(args)})")
    return "[" + ", ".join(calls) + "]"


@pytest.mark.parametrize("category, functions, ground_truth, output, valid", CASES)
def test_hand_made_verdicts(category, functions, ground_truth, output, valid):
    assert bfcl_ast.verdict(output, functions, ground_truth, category)[0] is valid


def test_error_types_name_the_rule():
    def error(output, functions=(AREA,), gt=AREA_GT, category="simple_python"):
        return bfcl_ast.verdict(output, list(functions), gt, category)[1]

    assert error("[calculate_triangle_area(base=10, height=5)]") == ""
    assert error("no calls here") == "ast_decoder:decoder_failed"
    assert error("[calculate_triangle_area(base=10)]") == "simple_function_checker:missing_required"
    assert error("[calculate_triangle_area(base='10', height=5)]") == "type_error:simple"
    assert error("[calculate_triangle_area(base=10, height=5, x=1)]") == "simple_function_checker:unexpected_param"
    assert error("[f(a=1), f(a=2)]") == "simple_function_checker:wrong_count"
    assert error("[get_weather(city='Paris')]", [WEATHER], WEATHER_GT, "parallel") == (
        "parallel_function_checker_no_order:wrong_count"
    )


def test_model_code_in_an_output_is_never_run():
    sneaky = "[math.factorial(number=__import__('os').getpid() + 0)]"
    assert bfcl_ast.verdict(sneaky, [FACTORIAL], FACT_GT, "simple_python") == (False, "ast_decoder:decoder_failed")
    assert bfcl_ast.verdict("[math.factorial(number=9**9**9)]", [FACTORIAL], FACT_GT, "simple_python")[0] is False


def test_system_prompt_is_bfcl_default_prompt():
    text = bfcl.system_prompt([FACTORIAL])
    assert text.startswith("You are an expert in composing functions.You are given a question")
    assert "you MUST put it in the format of [func_name1(params_name1=params_value1" in text
    assert text.endswith("Here is a list of functions in json format that you can invoke.\n"
                         + json.dumps([FACTORIAL], indent=4) + "\n")


def test_build_doc_keeps_system_and_user_turns():
    entry = {
        "id": "simple_python_7",
        "question": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "5 factorial?"}]],
        "function": [FACTORIAL],
        "ground_truth": FACT_GT,
    }
    doc = bfcl.build_doc(entry, "bfcl_simple")
    assert doc["system_prompt"] == bfcl.system_prompt([FACTORIAL]) + "\n\nBe brief."
    assert doc["question"] == "5 factorial?" and doc["category"] == "simple_python"
    assert bfcl.score("[math.factorial(number=5)]", doc) == 1.0
    assert bfcl.process_results(doc, ["[math.factorial(number=6)]"]) == {"acc": 0.0}


def test_unknown_category_names_the_closest():
    with pytest.raises(SuntoolError, match="did you mean bfcl_parallel"):
        bfcl_data.category_of("bfcl_paralel")
    with pytest.raises(SuntoolError, match="bfcl_simple, bfcl_multiple, bfcl_parallel, bfcl_parallel_multiple"):
        bfcl_data.category_of("bfcl_live_simple")
    assert bfcl_data.category_of("bfcl_simple") == "simple_python"


def test_missing_data_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("SUNTOOL_BFCL_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(SuntoolError, match=r"python -m suntool\.evals\.bfcl_data.*pip download --no-deps bfcl-eval=="):
        bfcl_data.load_category("bfcl_multiple")


def _fake_wheel(path, n=2):
    with zipfile.ZipFile(path, "w") as archive:
        for category in bfcl_data.CATEGORIES.values():
            questions, answers = bfcl_data.relative_files(category)
            rows = [{"id": f"{category}_{i}", "question": [[{"role": "user", "content": f"q{i}"}]],
                     "function": [FACTORIAL]} for i in range(n)]  # fmt: skip
            truths = [{"id": f"{category}_{i}", "ground_truth": FACT_GT} for i in range(n)]
            archive.writestr(f"bfcl_eval/data/{questions}", "".join(json.dumps(r) + "\n" for r in rows))
            archive.writestr(f"bfcl_eval/data/{answers}", "".join(json.dumps(r) + "\n" for r in truths))
        archive.writestr("bfcl_eval/data/BFCL_v4_web_search.json", "{}\n")  # not one of ours: not unpacked


def test_fetch_unpacks_only_our_categories_from_the_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "bfcl_eval-0-py3-none-any.whl"
    _fake_wheel(wheel)
    dest = bfcl_data.fetch(tmp_path / "data", wheel=wheel)
    assert not (dest / "BFCL_v4_web_search.json").exists()
    assert json.loads((dest / "SOURCE.json").read_text())["wheel"] == wheel.name
    monkeypatch.setenv("SUNTOOL_BFCL_DATA", str(dest))
    entries = bfcl_data.load_category("bfcl_parallel")
    assert [e["id"] for e in entries] == ["parallel_0", "parallel_1"] and entries[0]["ground_truth"] == FACT_GT
    assert not list(tmp_path.glob("data.tmp-*"))


def test_the_fetched_data_has_every_question_and_answer():
    """The real BFCL v4 files (`make setup` fetches them): sizes, and every answer names an offered function."""
    sizes = {name: len(bfcl_data.load_category(name)) for name in bfcl_data.CATEGORIES}
    assert sizes == {"bfcl_simple": 400, "bfcl_multiple": 200, "bfcl_parallel": 200, "bfcl_parallel_multiple": 200}
    for name in bfcl_data.CATEGORIES:
        for doc in bfcl.load_docs(name):
            offered = {f["name"] for f in json.loads(doc["functions"])}
            assert {next(iter(call)) for call in json.loads(doc["ground_truth"])} <= offered
            assert doc["question"] and "Here is a list of functions in json format" in doc["system_prompt"]


def test_right_answers_to_the_real_questions_pass_and_spoiled_ones_fail():
    rejected = []
    for name in bfcl_data.CATEGORIES:
        for doc in bfcl.load_docs(name):
            truth = json.loads(doc["ground_truth"])
            if bfcl.score(gold_call(truth), doc) == 0.0:
                rejected.append(doc["id"])
            assert bfcl.score(gold_call(truth, spoil=True), doc) == 0.0, doc["id"]
    # two answers BFCL's own checker rejects too (their answer does not fit their function doc)
    assert rejected == ["parallel_multiple_12", "parallel_multiple_26"]


def test_fetch_command_skips_when_the_data_is_there(tmp_path, capsys):
    wheel = tmp_path / "bfcl_eval-0-py3-none-any.whl"
    _fake_wheel(wheel)
    assert bfcl_data.main([str(tmp_path / "d"), "--wheel", str(wheel)]) == 0
    (tmp_path / "d" / "SOURCE.json").unlink()
    assert bfcl_data.main([str(tmp_path / "d"), "--wheel", str(wheel)]) == 0
    assert "already there" in capsys.readouterr().out and not (tmp_path / "d" / "SOURCE.json").exists()
    assert bfcl_data.main([str(tmp_path / "d"), "--wheel", str(wheel), "--force"]) == 0
    assert (tmp_path / "d" / "SOURCE.json").exists()
