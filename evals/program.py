"""`program`: write a one-line Python expression over a list `xs`, checked by sandboxed execution.

Record: `{"prompt": "Write a Python expression ...\\nExample: xs = [...] gives ...\\nExpression:",
"completion": " <expression>", "expression": "<expression>", "test_inputs": [[int, ...], ...]}`;
`prompt + completion` is the training text. `test_inputs[0]` is the example shown in the prompt,
the rest are hidden. Expressions are short (list comprehensions, slices, sorted/sum/max/...).

Scoring (`score`): the candidate is read from the output (`extract_expression`: first code
line, without fences, backticks, `Expression:`/`return`/`lambda xs:`/`name =` prefixes), checked
by an AST whitelist (`check_expression`: no attributes, imports, dunder names, `**`, strings;
calls only to the names in `SAFE_BUILTINS`), then run in a separate `python -I -S` process
(`suntool.evals.sandbox`) with an empty `__builtins__` plus `SAFE_BUILTINS`, CPU, memory and
wall-clock limits. It scores 1.0 iff on every test input it returns the same value as the
reference expression (iterators and tuples compare as lists, ints equal to floats, bools only
to bools). Model output is never evaluated in this process.
"""

from __future__ import annotations

import ast
import builtins
import json
import random
import re

from suntool.evals.common import distinct, task_rng
from suntool.evals.sandbox import run_python

NAME = "program"
STOP_STRINGS = ("\n\n", "\nWrite a Python")
SAFE_BUILTINS = (
    "abs", "all", "any", "enumerate", "len", "list", "max", "min", "range", "reversed", "set",
    "sorted", "sum", "tuple", "zip",
)  # fmt: skip
MAX_EXPRESSION_CHARS = 300
TIMEOUT_S = 5.0

_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword,
    ast.Name, ast.Load, ast.Store, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.ListComp, ast.SetComp,
    ast.GeneratorExp, ast.comprehension, ast.Subscript, ast.Slice, ast.Lambda, ast.arguments, ast.arg,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd, ast.Not, ast.And,
    ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
)  # fmt: skip


# --------------------------------------------------------------------------- the task families
# Each family returns (description, reference expression); descriptions complete "... returns".


def _affine(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 5), rng.randint(1, 9)
    desc = rng.choice((f"each element multiplied by {a}, plus {b}", f"{a} * x + {b} for every element x"))
    return desc, f"[{a} * x + {b} for x in xs]"


def _scale(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(2, 10)
    return rng.choice(
        (f"each element multiplied by {a}", f"every element times {a}")
    ), f"[x * {a} for x in xs]"


def _shift(rng: random.Random) -> tuple[str, str]:
    b = rng.randint(1, 10)
    if rng.random() < 0.5:
        return rng.choice(
            (f"each element plus {b}", f"every element increased by {b}")
        ), f"[x + {b} for x in xs]"
    return rng.choice(
        (f"each element minus {b}", f"every element decreased by {b}")
    ), f"[x - {b} for x in xs]"


def _square(rng: random.Random) -> tuple[str, str]:
    return rng.choice(("each element squared", "the square of every element")), "[x * x for x in xs]"


def _parity(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return rng.choice(
            ("only the even elements", "the even numbers, in order")
        ), "[x for x in xs if x % 2 == 0]"
    return rng.choice(("only the odd elements", "the odd numbers, in order")), "[x for x in xs if x % 2 == 1]"


def _divisible(rng: random.Random) -> tuple[str, str]:
    m = rng.randint(3, 5)
    return f"only the elements divisible by {m}", f"[x for x in xs if x % {m} == 0]"


def _threshold(rng: random.Random) -> tuple[str, str]:
    t = rng.randint(3, 15)
    if rng.random() < 0.5:
        return f"only the elements greater than {t}", f"[x for x in xs if x > {t}]"
    return f"only the elements less than {t}", f"[x for x in xs if x < {t}]"


def _reverse(rng: random.Random) -> tuple[str, str]:
    return rng.choice(("the list in reverse order", "the elements from last to first")), "xs[::-1]"


def _sort(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return rng.choice(
            ("the elements sorted in increasing order", "the list sorted ascending")
        ), "sorted(xs)"
    return (
        rng.choice(("the elements sorted in decreasing order", "the list sorted from largest to smallest")),
        "sorted(xs, reverse=True)",
    )


def _smallest(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(2, 4)
    if rng.random() < 0.5:
        return f"the {k} smallest elements in increasing order", f"sorted(xs)[:{k}]"
    return f"the {k} largest elements in decreasing order", f"sorted(xs, reverse=True)[:{k}]"


def _head_tail(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(2, 4)
    if rng.random() < 0.5:
        return f"the first {k} elements", f"xs[:{k}]"
    return f"the last {k} elements", f"xs[-{k}:]"


def _aggregate(rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            ("the sum of the elements", "sum(xs)"),
            ("the largest element", "max(xs)"),
            ("the smallest element", "min(xs)"),
            ("the difference between the largest and the smallest element", "max(xs) - min(xs)"),
            ("the sum of the squares of the elements", "sum([x * x for x in xs])"),
        )
    )


def _count(rng: random.Random) -> tuple[str, str]:
    t = rng.randint(3, 15)
    return f"how many elements are greater than {t}", f"len([x for x in xs if x > {t}])"


def _sum_filtered(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "the sum of the even elements", "sum([x for x in xs if x % 2 == 0])"
    t = rng.randint(3, 15)
    return f"the sum of the elements greater than {t}", f"sum([x for x in xs if x > {t}])"


def _unique(rng: random.Random) -> tuple[str, str]:
    return "the distinct elements in increasing order", "sorted(set(xs))"


def _rotate(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(1, 3)
    return f"the list rotated left by {k} positions", f"xs[{k}:] + xs[:{k}]"


def _pairs(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "the sums of each pair of neighbouring elements", "[x + y for x, y in zip(xs, xs[1:])]"
    return "the elements at even positions (0, 2, 4, ...)", "xs[::2]"


def _filter_map(rng: random.Random) -> tuple[str, str]:
    a, t = rng.randint(2, 5), rng.randint(3, 12)
    return f"the elements greater than {t}, each multiplied by {a}", f"[x * {a} for x in xs if x > {t}]"


FAMILIES = (
    _affine, _scale, _shift, _square, _parity, _divisible, _threshold, _reverse, _sort, _smallest,
    _head_tail, _aggregate, _count, _sum_filtered, _unique, _rotate, _pairs, _filter_map,
)  # fmt: skip


# --------------------------------------------------------------------------- generation


def reference_value(expression: str, xs: list[int]):
    """Evaluate a trusted (generator-written) expression on `xs`; never call it on model output."""
    env = {"__builtins__": {}, **{name: getattr(builtins, name) for name in SAFE_BUILTINS}, "xs": list(xs)}
    return eval(compile(expression, "<reference>", "eval"), env)  # noqa: S307 - our own expressions only


def _random_list(rng: random.Random, low: int, high: int) -> list[int]:
    return [rng.randint(0, 20) for _ in range(rng.randint(low, high))]


def _record(rng: random.Random) -> dict:
    while True:
        desc, expression = rng.choice(FAMILIES)(rng)
        inputs = [_random_list(rng, 4, 6)] + [_random_list(rng, 5, 8) for _ in range(3)]
        outputs = [reference_value(expression, xs) for xs in inputs]
        informative = outputs[0] != [] and any(out != outputs[0] for out in outputs)
        if informative and any(out != xs for out, xs in zip(outputs, inputs, strict=True)):
            break
    prompt = (
        f"Write a Python expression that uses the list xs and returns {desc}.\n"
        f"Example: xs = {inputs[0]} gives {outputs[0]}\nExpression:"
    )
    return {"prompt": prompt, "completion": " " + expression, "expression": expression, "test_inputs": inputs}


def generate(n: int, seed: int) -> list[dict]:
    """`n` distinct expression-writing records, the same for the same seed."""
    return distinct(n, task_rng(NAME, seed), _record)


# --------------------------------------------------------------------------- scoring

_ASSIGN_PREFIX = re.compile(r"^[A-Za-z_]\w*\s*=(?!=)\s*")
_LABEL_PREFIX = re.compile(r"^(?:expression|answer|python)\s*:\s*", re.IGNORECASE)


def extract_expression(output: str) -> str | None:
    """The candidate expression in a model's output: its first code line, cleaned of wrappers."""
    for raw in output.strip().splitlines():
        line = raw.strip()
        if not line or line.startswith("```"):
            continue
        line = _LABEL_PREFIX.sub("", line).strip().strip("`").strip()
        for prefix in (">>> ", "return "):
            if line.startswith(prefix):
                line = line[len(prefix) :].strip()
        line = re.sub(r"^lambda\s+xs\s*:\s*", "", line)
        line = _ASSIGN_PREFIX.sub("", line).rstrip(";").strip()
        return line or None
    return None


def check_expression(expression: str) -> str | None:
    """Why `expression` is refused by the whitelist, or None if it may run in the sandbox."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return f"longer than {MAX_EXPRESSION_CHARS} characters"
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError) as err:
        return f"not an expression: {err}"
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return f"{type(node).__name__} is not allowed"
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return f"name {node.id!r} is not allowed"
        if isinstance(node, ast.arg) and node.arg.startswith("_"):
            return f"argument {node.arg!r} is not allowed"
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            return "this keyword argument is not allowed"
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in SAFE_BUILTINS
        ):
            return "only calls to " + ", ".join(SAFE_BUILTINS) + " are allowed"
        if isinstance(node, ast.Constant) and not (
            node.value is None
            or isinstance(node.value, bool)
            or (isinstance(node.value, int) and abs(node.value) <= 10**6)
        ):
            return f"constant {node.value!r} is not allowed"
    return None


# Runs in a fresh `python -I -S`: reads {"candidate", "reference", "inputs", "names"} as JSON on
# stdin, prints {"ok": bool} or exits non-zero. Limits first, then nothing but a bare eval.
_RUNNER = r"""
import builtins, itertools, json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_CPU, (2, 2))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 29, 1 << 29))
except Exception:
    pass
job = json.loads(sys.stdin.read())
safe = {name: getattr(builtins, name) for name in job["names"]}

def norm(value, depth=0):
    if depth > 20:
        raise ValueError("too deep")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple, range)) or hasattr(value, "__next__"):
        return [norm(item, depth + 1) for item in itertools.islice(value, 100001)]
    return value

def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b

candidate = compile(job["candidate"], "<candidate>", "eval")
reference = compile(job["reference"], "<reference>", "eval")
ok = True
for xs in job["inputs"]:
    want = norm(eval(reference, {"__builtins__": {}, **safe, "xs": list(xs)}))
    try:
        got = norm(eval(candidate, {"__builtins__": {}, **safe, "xs": list(xs)}))
    except Exception:
        ok = False
        break
    if not same(got, want):
        ok = False
        break
print(json.dumps({"ok": ok}))
"""


def run_sandboxed(
    candidate: str, reference: str, inputs: list[list[int]], timeout_s: float = TIMEOUT_S
) -> bool:
    """True iff the whitelisted `candidate` equals `reference` on every input, run out of process."""
    if check_expression(candidate) is not None:
        return False
    job = json.dumps(
        {"candidate": candidate, "reference": reference, "inputs": inputs, "names": SAFE_BUILTINS}
    )
    run = run_python(_RUNNER, job, timeout_s=timeout_s, site=False)
    if run.timed_out or run.returncode != 0:
        return False
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])["ok"] is True
    except (IndexError, ValueError, KeyError, TypeError):
        return False


def score(output: str, record: dict) -> float:
    """1.0 iff the expression in `output` matches the reference on all of the record's test inputs."""
    candidate = extract_expression(output)
    if candidate is None:
        return 0.0
    inputs = [list(xs) for xs in record["test_inputs"]]
    return 1.0 if run_sandboxed(candidate, record["expression"], inputs) else 0.0
