"""BFCL v4 (Python AST categories) as lm-eval tasks: prompts as BFCL writes them, verdicts as it scores.

Tasks `bfcl_simple`, `bfcl_multiple`, `bfcl_parallel`, `bfcl_parallel_multiple` (group `bfcl`),
data from `suntool.evals.bfcl_data` (the `bfcl-eval` wheel's data files, fetched once).

Prompt (`build_doc`): BFCL's default prompt for models without native function calling
(`ret_fmt=python&tool_call_tag=False&func_doc_fmt=json&prompt_fmt=plaintext&style=classic`, its
`formulate_system_prompt`): a system message (`system_prompt`: the classic instructions and
the function docs as `json.dumps(functions, indent=4)`; a system message of the question is
appended after a blank line) and the question's user message(s) (`question`, joined by a blank
line). The lm-eval task renders them as `description` (system) and `doc_to_text` (user), so with
`--apply_chat_template` they reach the model through its chat template exactly as BFCL's
quick-testing OSS handler sends them; `suntool eval` applies the chat template to these tasks
when the model has one. Without a chat template the text is `system_prompt + question`.

Score (`process_results`): `{"acc": 1.0 or 0.0}` from `suntool.evals.bfcl_ast.verdict` on the
first generation. Docs keep the function docs and the answer as JSON strings (`functions`,
`ground_truth`): their shapes differ row to row, which an Arrow table would otherwise pad with nulls.
"""

from __future__ import annotations

import json

from suntool.evals import bfcl_ast, bfcl_data

GROUP = "bfcl"
TASKS = tuple(bfcl_data.CATEGORIES)

_PERSONA = "You are an expert in composing functions."
_TASK = (
    "You are given a question and a set of possible functions. Based on the question, you will need to make one or "
    "more function/tool calls to achieve the purpose. If none of the functions can be used, point it out. If the "
    "given question lacks the parameters required by the function, also point it out."
)
_OUTPUT_FORMAT = "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]"
_TOOL_CALL = (
    "You should only return the function calls in your response.\n\nIf you decide to invoke any of the function(s), "
    f"you MUST put it in the format of {_OUTPUT_FORMAT}.  You SHOULD NOT include any other text in the response."
)
_MULTITURN = (
    "At each turn, you should try your best to complete the tasks requested by the user within the current turn. "
    "Continue to output functions to call until you have fulfilled the user's request to the best of your ability. "
    "Once you have no more functions to call, the system will consider the current turn complete and proceed to the "
    "next turn or task."
)


def system_prompt(functions: list[dict]) -> str:
    """BFCL's default system prompt for prompting models (`formulate_system_prompt`, plaintext, classic)."""
    tools = f"Here is a list of functions in json format that you can invoke.\n{json.dumps(functions, indent=4)}\n"
    return f"{_PERSONA}{_TASK}\n\n{_TOOL_CALL}\n\n{_MULTITURN}\n\n{tools}"


def build_doc(entry: dict, task: str) -> dict:
    """One lm-eval doc from a BFCL entry (with `ground_truth`)."""
    turns = entry["question"]
    if len(turns) != 1:
        raise ValueError(f"{entry['id']}: {len(turns)} turns; only single-turn categories are supported")
    messages = turns[0]
    system = system_prompt(entry["function"])
    users = []
    for message in messages:
        if message["role"] == "system" and not users:
            system = system + "\n\n" + message["content"]
        elif message["role"] == "user":
            users.append(message["content"])
        else:
            raise ValueError(f"{entry['id']}: unexpected {message['role']} message")
    return {
        "id": entry["id"],
        "category": bfcl_data.category_of(task),
        "system_prompt": system,
        "question": "\n\n".join(users),
        "functions": json.dumps(entry["function"]),
        "ground_truth": json.dumps(entry["ground_truth"]),
    }


def load_docs(task: str) -> list[dict]:
    """Every doc of `task` (SuntoolError if its data is not fetched or the name is unknown)."""
    return [build_doc(entry, task) for entry in bfcl_data.load_category(task)]


def _dataset(task: str):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_docs(task))})


# lm-eval `custom_dataset` hooks, one per task (lm-eval passes the task's metadata as keyword arguments)
def load_simple(**_kwargs):
    return _dataset("bfcl_simple")


def load_multiple(**_kwargs):
    return _dataset("bfcl_multiple")


def load_parallel(**_kwargs):
    return _dataset("bfcl_parallel")


def load_parallel_multiple(**_kwargs):
    return _dataset("bfcl_parallel_multiple")


def score(output: str, doc: dict) -> float:
    """1.0 iff BFCL's AST rules accept `output` for `doc`."""
    valid, _ = bfcl_ast.verdict(output, json.loads(doc["functions"]), json.loads(doc["ground_truth"]), doc["category"])
    return 1.0 if valid else 0.0


def process_results(doc: dict, results: list) -> dict[str, float]:
    """lm-eval hook: `acc` of the first generation."""
    output = results[0] if results else ""
    return {"acc": score(output if isinstance(output, str) else str(output), doc)}
