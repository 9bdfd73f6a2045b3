"""suntool's BFCL verdicts and prompt equal BFCL's own code (bfcl-eval 2026.3.23), on the hand-made outputs.

Runs in .venv-bfcl, where `bfcl-eval` and its dependencies are installed (their pins clash with
suntool's, so the project venv never has them): `make test-interop` (part of `make test`). Run
without conftest.py (`--noconftest`): nothing here needs torch or the model fixtures.
"""

from __future__ import annotations

import copy

import pytest

from suntool.evals import bfcl, bfcl_ast
from tests.test_bfcl import CASES, FACTORIAL, STATS, WEATHER

pytestmark = pytest.mark.interop


def _prompting_model_name() -> str:
    """A BFCL model run in prompt mode that keeps dots in function names, as suntool scores."""
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING

    for name, config in MODEL_CONFIG_MAPPING.items():
        if "_" not in name and not config.is_fc_model and not config.underscore_to_dot:
            return name
    raise AssertionError("bfcl-eval lists no prompt-mode model that keeps dots in function names")


def _bfcl_verdict(output: str, functions: list, ground_truth: list, category: str, model: str) -> tuple[bool, str]:
    """BFCL's `_evaluate_single_ast_entry` for a prompting OSS model on a Python category, step by step."""
    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting
    from bfcl_eval.utils import is_function_calling_format_output

    try:
        decoded = default_decode_ast_prompting(output, ReturnFormat.PYTHON, False)
    except Exception:  # noqa: BLE001 - as BFCL's runner
        return False, "ast_decoder:decoder_failed"
    if not is_function_calling_format_output(decoded):
        return False, "ast_decoder:decoder_wrong_output_format"
    result = ast_checker(copy.deepcopy(functions), decoded, copy.deepcopy(ground_truth), Language.PYTHON, category,
                         model)  # fmt: skip
    return bool(result["valid"]), "" if result["valid"] else result["error_type"]


def test_there_are_a_few_dozen_cases_of_each_kind():
    assert len(CASES) >= 40
    assert sum(valid for *_, valid in CASES) >= 12 and sum(not valid for *_, valid in CASES) >= 25
    assert {case[0] for case in CASES} == {"simple_python", "multiple", "parallel", "parallel_multiple"}


@pytest.mark.parametrize("category, functions, ground_truth, output, valid", CASES)
def test_verdict_equals_bfcl_checker(category, functions, ground_truth, output, valid):
    model = _prompting_model_name()
    theirs = _bfcl_verdict(output, functions, ground_truth, category, model)
    ours = bfcl_ast.verdict(output, functions, ground_truth, category)
    assert ours == theirs
    assert ours[0] is valid  # and the hand-written expectation agrees with both


@pytest.mark.parametrize("functions", [[FACTORIAL], [WEATHER, FACTORIAL], [STATS]])
def test_system_prompt_equals_bfcl_default(functions):
    from bfcl_eval.constants.default_prompts import DEFAULT_SYSTEM_PROMPT_FORMAT
    from bfcl_eval.model_handler.utils import formulate_system_prompt, system_prompt_pre_processing_chat_model

    assert bfcl.system_prompt(functions) == formulate_system_prompt(DEFAULT_SYSTEM_PROMPT_FORMAT, functions)
    entry = {"id": "simple_python_0", "question": [[{"role": "user", "content": "5!?"}]], "function": functions,
             "ground_truth": []}  # fmt: skip
    messages = system_prompt_pre_processing_chat_model(copy.deepcopy(entry["question"][0]), functions, entry["id"])
    doc = bfcl.build_doc(entry, "bfcl_simple")
    assert messages == [{"role": "system", "content": doc["system_prompt"]}, {"role": "user", "content": "5!?"}]


@pytest.mark.parametrize("task", ["bfcl_simple", "bfcl_multiple", "bfcl_parallel", "bfcl_parallel_multiple"])
def test_verdicts_on_the_real_data_equal_bfcl_checker(task):
    """Every real question, answered right (the answer's first allowed values) and wrong (one value
    changed, one call dropped): the same verdict from both checkers."""
    import json

    from tests.test_bfcl import gold_call

    model = _prompting_model_name()
    docs = bfcl.load_docs(task)
    for doc in docs:
        functions, truth, category = json.loads(doc["functions"]), json.loads(doc["ground_truth"]), doc["category"]
        right = gold_call(truth)
        wrong = (gold_call(truth, spoil=True), gold_call(truth[:-1]), right.replace("(", "_x(", 1), right + right)
        for output in (right, *wrong):
            assert bfcl_ast.verdict(output, functions, truth, category) == _bfcl_verdict(
                output, functions, truth, category, model
            ), (doc["id"], output)
