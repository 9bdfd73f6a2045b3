"""BFCL's AST scoring of prompted Python function calls, ported from `bfcl-eval` 2026.3.23 (Apache-2.0).

`verdict(output, functions, ground_truth, category)` returns `(valid, error_type)` for one raw
model output, as BFCL's `ast_file_runner` decides it for a prompting (non-function-calling)
model on a Python category:

1. decode (`decode_ast_prompting`, BFCL's `default_decode_ast_prompting` + `ast_parse`): strip
   backticks, newlines and spaces, wrap in `[...]` if needed, parse as a Python expression, each
   element a call -> `{dotted.name: {keyword: value}}`; any failure is
   `ast_decoder:decoder_failed`; a result that is not a list of one-key dicts of dicts is
   `ast_decoder:decoder_wrong_output_format`;
2. check (`ast_checker`): `simple` needs exactly one call; `multiple` exactly one call, checked
   against the function the answer names; `parallel*` as many calls as answers, matched in any
   order. One call passes when the function name is the expected one, every required
   parameter is present, no parameter is unknown to the doc or to the answer, each value has the
   doc's type (Python mapping; an int is accepted for a float; one level of nested type check for
   arrays/tuples; a value of the answer's type passes as a "variable"), and the value is among
   the allowed ones (strings compared after `standardize_string`: no spaces or `,./-_*^`,
   lowercase, `'` -> `"`; lists element-wise; dicts key by key), and every answer parameter not
   given is optional (its allowed values include `""`).

Function names are compared as written (`underscore_to_dot` is off for prompting models).

One deliberate difference: BFCL `eval`s binary operations and lambdas found in model output
(`x=2*3`); here only arithmetic on literals is evaluated (`+ - * / // % **`, bounded), and
anything else in such a position fails decoding. The Python-only branches (no Java/JavaScript)
are kept line for line otherwise, quirks included (a unary operator always negates, as BFCL's
does). `tests/test_bfcl_interop.py` checks the verdicts against BFCL's own code.
"""

from __future__ import annotations

import ast
import operator
import re

PYTHON_TYPE_MAPPING = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
PYTHON_NESTED_TYPE_CHECK_LIST = ["array", "tuple"]


# --------------------------------------------------------------------------- decoding


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip


def _literal_arithmetic(node: ast.AST):
    """What `eval(ast.unparse(node))` gives for arithmetic on number/string literals; ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex, str, bytes)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal_arithmetic(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _literal_arithmetic(node.left), _literal_arithmetic(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("exponent too large to evaluate")
        if isinstance(node.op, ast.Mult) and isinstance(left, (str, bytes)) != isinstance(right, (str, bytes)):
            count = right if isinstance(left, (str, bytes)) else left
            if isinstance(count, int) and count > 10_000:
                raise ValueError("repetition too large to evaluate")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"only arithmetic on literals is evaluated, not {ast.unparse(node)!r}")


def resolve_ast_call(elem: ast.Call) -> dict:
    func_parts = []
    func_part = elem.func
    while isinstance(func_part, ast.Attribute):
        func_parts.append(func_part.attr)
        func_part = func_part.value
    if isinstance(func_part, ast.Name):
        func_parts.append(func_part.id)
    func_name = ".".join(reversed(func_parts))
    args_dict = {}
    for arg in elem.keywords:
        args_dict[arg.arg] = resolve_ast_by_type(arg.value)
    return {func_name: args_dict}


def resolve_ast_by_type(value: ast.AST):
    if isinstance(value, ast.Constant):
        return "..." if value.value is Ellipsis else value.value
    if isinstance(value, ast.UnaryOp):
        return -value.operand.value  # BFCL's rule: AttributeError unless the operand is a literal
    if isinstance(value, ast.List):
        return [resolve_ast_by_type(v) for v in value.elts]
    if isinstance(value, ast.Dict):
        return {resolve_ast_by_type(k): resolve_ast_by_type(v) for k, v in zip(value.keys, value.values, strict=True)}
    if isinstance(value, ast.BinOp):
        return _literal_arithmetic(value)
    if isinstance(value, ast.Name):
        return value.id
    if isinstance(value, ast.Call):
        return ast.unparse(value) if len(value.keywords) == 0 else resolve_ast_call(value)
    if isinstance(value, ast.Tuple):
        return tuple(resolve_ast_by_type(v) for v in value.elts)
    if isinstance(value, ast.Lambda):
        raise ValueError("a lambda is not a value")  # BFCL's rule fails on every lambda too
    if isinstance(value, ast.Subscript):
        return ast.unparse(value.value) + "[" + ast.unparse(value.slice) + "]"
    raise ValueError(f"Unsupported AST type: {type(value)}")


def decode_ast_prompting(result: str) -> list:
    """BFCL's `default_decode_ast_prompting` for Python; raises on anything it cannot decode."""
    result = result.strip("`\n ")
    if not result.startswith("["):
        result = "[" + result
    if not result.endswith("]"):
        result = result + "]"
    cleaned_input = result.strip().strip("'")
    parsed = ast.parse(cleaned_input, mode="eval")
    extracted = []
    if isinstance(parsed.body, ast.Call):
        extracted.append(resolve_ast_call(parsed.body))
    else:
        for elem in parsed.body.elts:
            if not isinstance(elem, ast.Call):
                raise ValueError("every element must be a function call")
            extracted.append(resolve_ast_call(elem))
    return extracted


def is_function_calling_format_output(decoded_output) -> bool:
    if type(decoded_output) is not list:
        return False
    for item in decoded_output:
        if type(item) is not dict or len(item) != 1:
            return False
        if type(list(item.values())[0]) is not dict:
            return False
    return True


# --------------------------------------------------------------------------- checking


def _fail(error_type: str, error: str) -> dict:
    return {"valid": False, "error": [error], "error_type": error_type}


def find_description(func_descriptions, name):
    if isinstance(func_descriptions, list):
        for func_description in func_descriptions:
            if func_description["name"] == name:
                return func_description
        return None
    return func_descriptions


def get_possible_answer_type(possible_answer: list):
    for answer in possible_answer:
        if answer != "":
            return type(answer)
    return None


def type_checker(param, value, possible_answer, expected_type_description, expected_type_converted,
                 nested_type_converted) -> dict:  # fmt: skip
    result = {"valid": True, "error": [], "is_variable": False, "error_type": "type_error:simple"}
    is_variable = False
    possible_answer_type = get_possible_answer_type(possible_answer)
    if possible_answer_type is not None and possible_answer_type != expected_type_converted:
        is_variable = True

    if type(value) is expected_type_converted:
        if nested_type_converted is None:
            result["is_variable"] = is_variable
            return result
        for possible_answer_item in possible_answer:
            flag = True
            if type(possible_answer_item) is list:
                for value_item in value:
                    checker_result = type_checker(
                        param, value_item, possible_answer_item, str(nested_type_converted), nested_type_converted, None
                    )
                    if not checker_result["valid"]:
                        flag = False
                        break
            if flag:
                return {"valid": True, "error": [], "is_variable": is_variable}
        result["valid"] = False
        result["error"] = [f"Nested type checking failed for parameter {param!r}."]
        result["error_type"] = "type_error:nested"

    possible_answer_type = get_possible_answer_type(possible_answer)
    if possible_answer_type is not None and type(value) is possible_answer_type:
        result["is_variable"] = True
        return result

    result["valid"] = False
    result["error"].append(f"Incorrect type for parameter {param!r}. Expected type {expected_type_description}.")
    result["error_type"] = "type_error:simple"
    return result


def standardize_string(input_string: str) -> str:
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", input_string).lower().replace("'", '"')


def string_checker(param: str, model_output: str, possible_answer: list) -> dict:
    standardized = [standardize_string(answer) for answer in possible_answer if type(answer) is str]
    if standardize_string(model_output) not in standardized:
        return _fail("value_error:string", f"Invalid value for parameter {param!r}: {model_output!r}.")
    return {"valid": True, "error": []}


def list_checker(param: str, model_output: list, possible_answer: list) -> dict:
    standardize_model_output = list(model_output)
    for i in range(len(standardize_model_output)):
        if type(standardize_model_output[i]) is str:
            standardize_model_output[i] = standardize_string(model_output[i])
    standardize_possible_answer = []
    for i in range(len(possible_answer)):
        standardize_possible_answer.append([])
        for j in range(len(possible_answer[i])):
            item = possible_answer[i][j]
            standardize_possible_answer[i].append(standardize_string(item) if type(item) is str else item)
    if standardize_model_output not in standardize_possible_answer:
        return _fail("value_error:list/tuple", f"Invalid value for parameter {param!r}: {model_output!r}.")
    return {"valid": True, "error": []}


def dict_checker(param: str, model_output: dict, possible_answers: list) -> dict:
    result = {"valid": False, "error": [], "error_type": "dict_checker:unclear"}
    for i in range(len(possible_answers)):
        if possible_answers[i] == "":
            continue
        result = {"valid": False, "error": [], "error_type": "dict_checker:unclear"}
        flag = True
        possible_answer = possible_answers[i]
        for key, value in model_output.items():
            if key not in possible_answer:
                result = _fail("value_error:dict_key", f"Unexpected dict key parameter: {key!r}.")
                flag = False
                break
            standardize_value = standardize_string(value) if type(value) is str else value
            standardize_possible_answer = [
                standardize_string(item) if type(item) is str else item for item in possible_answer[key]
            ]
            if standardize_value not in standardize_possible_answer:
                result = _fail("value_error:dict_value", f"Invalid value for parameter {key!r}: {value!r}.")
                flag = False
                break
        for key, value in possible_answer.items():
            if key not in model_output and "" not in value:
                result = _fail("value_error:dict_key", f"Missing dict key parameter: {key!r}.")
                flag = False
                break
        if flag:
            return {"valid": True, "error": []}
    return result


def list_dict_checker(param: str, model_output: list, possible_answers: list) -> dict:
    result = {"valid": False, "error": [], "error_type": "list_dict_checker:unclear"}
    for answer_index in range(len(possible_answers)):
        flag = True
        if len(model_output) != len(possible_answers[answer_index]):
            result = _fail("value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            flag = False
            continue
        for dict_index in range(len(model_output)):
            result = dict_checker(param, model_output[dict_index], [possible_answers[answer_index][dict_index]])
            if not result["valid"]:
                flag = False
                break
        if flag:
            return {"valid": True, "error": []}
    return result


def simple_function_checker(func_description: dict, model_output: dict, possible_answer: dict) -> dict:
    possible_answer = list(possible_answer.values())[0]
    func_name = func_description["name"]
    param_details = func_description["parameters"]["properties"]
    required_params = func_description["parameters"]["required"]
    result = {"valid": True, "error": [], "error_type": "simple_function_checker:unclear"}

    if func_name not in model_output:
        return _fail("simple_function_checker:wrong_func_name", f"Function name {func_name!r} not found.")
    model_params = model_output[func_name]

    for param in required_params:
        if param not in model_params:
            return _fail("simple_function_checker:missing_required", f"Missing required parameter: {param!r}.")

    for param, value in model_params.items():
        if param not in param_details or param not in possible_answer:
            return _fail("simple_function_checker:unexpected_param", f"Unexpected parameter: {param!r}.")
        expected_type_description = param_details[param]["type"]
        nested_type_converted = None
        expected_type_converted = PYTHON_TYPE_MAPPING[expected_type_description]
        if expected_type_description in PYTHON_NESTED_TYPE_CHECK_LIST:
            nested_type_converted = PYTHON_TYPE_MAPPING[param_details[param]["items"]["type"]]

        if expected_type_description == "tuple" and type(value) is tuple:
            value = list(value)
        if expected_type_description == "float" and type(value) is int:
            value = float(value)

        type_check_result = type_checker(
            param, value, possible_answer[param], expected_type_description, expected_type_converted,
            nested_type_converted,
        )  # fmt: skip
        is_variable = type_check_result["is_variable"]
        if not type_check_result["valid"]:
            return type_check_result

        if not is_variable:
            if expected_type_converted is dict:
                result = dict_checker(param, value, possible_answer[param])
                if not result["valid"]:
                    return result
                continue
            if expected_type_converted is list and nested_type_converted is dict:
                result = list_dict_checker(param, value, possible_answer[param])
                if not result["valid"]:
                    return result
                continue
            if expected_type_converted is str:
                result = string_checker(param, value, possible_answer[param])
                if not result["valid"]:
                    return result
                continue
            if expected_type_converted is list:
                result = list_checker(param, value, possible_answer[param])
                if not result["valid"]:
                    return result
                continue

        if value not in possible_answer[param]:
            return _fail("value_error:others", f"Invalid value for parameter {param!r}: {value!r}.")

    for param in possible_answer:
        if param not in model_params and "" not in possible_answer[param]:
            return _fail(
                "simple_function_checker:missing_optional",
                f"Optional parameter {param!r} not provided and not marked as optional.",
            )
    return result


def parallel_function_checker_no_order(func_descriptions: list, model_output: list, possible_answers: list) -> dict:
    if len(model_output) != len(possible_answers):
        return _fail("parallel_function_checker_no_order:wrong_count", "Wrong number of functions.")
    matched_indices: list[int] = []
    result: dict = {"valid": True, "error": []}
    for i in range(len(possible_answers)):
        func_name_expected = list(possible_answers[i].keys())[0]
        func_description = find_description(func_descriptions, func_name_expected)
        for index in range(len(model_output)):
            if index in matched_indices:
                continue
            result = simple_function_checker(func_description, model_output[index], possible_answers[i])
            if result["valid"]:
                matched_indices.append(index)
                break
        if not result["valid"]:
            return _fail(
                "parallel_function_checker_no_order:cannot_find_match",
                f"Could not find a matching function for index {i} of possible answers.",
            )
    return {"valid": True, "error": []}


def multiple_function_checker(func_descriptions: list, model_output: list, possible_answers: list) -> dict:
    if len(model_output) != len(possible_answers):
        return _fail("multiple_function_checker:wrong_count", "Wrong number of functions.")
    func_name_expected = list(possible_answers[0].keys())[0]
    func_description = find_description(func_descriptions, func_name_expected)
    return simple_function_checker(func_description, model_output[0], possible_answers[0])


def ast_checker(func_description: list, model_output: list, possible_answer: list, test_category: str) -> dict:
    """BFCL's `ast_checker` for Python (`test_category`: simple_python, multiple, parallel, parallel_multiple)."""
    if "parallel" in test_category:
        return parallel_function_checker_no_order(func_description, model_output, possible_answer)
    if "multiple" in test_category:
        return multiple_function_checker(func_description, model_output, possible_answer)
    if len(model_output) != 1:
        return _fail("simple_function_checker:wrong_count", "Wrong number of functions.")
    return simple_function_checker(func_description[0], model_output[0], possible_answer[0])


def verdict(output: str, functions: list, ground_truth: list, category: str) -> tuple[bool, str]:
    """`(valid, error_type)` of one raw model output; `error_type` is "" when valid."""
    try:
        decoded = decode_ast_prompting(output)
    except Exception:  # noqa: BLE001 - BFCL: any decoding failure is a wrong answer
        return False, "ast_decoder:decoder_failed"
    if not is_function_calling_format_output(decoded):
        return False, "ast_decoder:decoder_wrong_output_format"
    try:
        result = ast_checker(functions, decoded, ground_truth, category)
    except Exception:  # noqa: BLE001 - odd values BFCL's checker would also trip on (unhashable, ...)
        return False, "ast_checker:exception"
    return bool(result["valid"]), "" if result["valid"] else result.get("error_type", "")
