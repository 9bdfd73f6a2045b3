"""Where the BFCL v4 data lives, how it gets there, and reading one category of it.

The questions and answers come from the `bfcl-eval` wheel (Apache-2.0), version `VERSION`, whose
`bfcl_eval/data/` holds `BFCL_v4_<category>.json` (one JSON object a line: `id`, `question` (a
list of turns, each a list of `{"role", "content"}`), `function` (the offered function docs))
and `possible_answer/BFCL_v4_<category>.json` (`id`, `ground_truth`: a list of
`{function name: {parameter: [allowed values]}}`). suntool never installs or imports
`bfcl-eval` (its pins clash with suntool's): `fetch()` (`python -m suntool.evals.bfcl_data`, or
`make bfcl-data`, which `make setup` runs; nothing to do when the files are there, `--force`
refetches) downloads the wheel with `pip download --no-deps`
and unpacks only the data files of `CATEGORIES` into `data_dir()`, atomically. Nothing is
downloaded at evaluation time.

`data_dir()`: `$SUNTOOL_BFCL_DATA` if set (a directory laid out like `bfcl_eval/data/`), else
`$XDG_CACHE_HOME/suntool/bfcl_eval-<VERSION>/data` (`~/.cache/...` by default).
`load_category(task)` returns the entries of one task (`bfcl_simple`, ...) with their
`ground_truth` joined by id; a missing file or an unknown task is a `SuntoolError` that says
what to run or which names exist.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from suntool.errors import SuntoolError

VERSION = "2026.3.23"
PACKAGE = f"bfcl-eval=={VERSION}"
# suntool task name -> BFCL v4 category (the non-live Python AST categories)
CATEGORIES = {
    "bfcl_simple": "simple_python",
    "bfcl_multiple": "multiple",
    "bfcl_parallel": "parallel",
    "bfcl_parallel_multiple": "parallel_multiple",
}
FETCH_HINT = (
    "fetch it (the wheel's data only, no dependencies installed) with `python -m suntool.evals.bfcl_data` "
    f"or `make bfcl-data`, or unpack bfcl_eval/data/ of `pip download --no-deps {PACKAGE}` and set SUNTOOL_BFCL_DATA"
)


def data_dir() -> Path:
    """The directory holding `BFCL_v4_<category>.json` and `possible_answer/` (see the module docstring)."""
    override = os.environ.get("SUNTOOL_BFCL_DATA")
    if override:
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "suntool" / f"bfcl_eval-{VERSION}" / "data"


def relative_files(category: str) -> tuple[str, str]:
    """The question file and the answer file of one BFCL category, relative to `data_dir()`."""
    name = f"BFCL_v4_{category}.json"
    return name, f"possible_answer/{name}"


def category_of(task: str) -> str:
    """The BFCL category of a suntool task name; SuntoolError with the closest names for anything else."""
    if task in CATEGORIES:
        return CATEGORIES[task]
    by_category = {category: name for name, category in CATEGORIES.items()}
    if task in by_category:  # a BFCL category name given for the task name
        return task
    close = difflib.get_close_matches(task, list(CATEGORIES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise SuntoolError(
        f"unknown BFCL category {task!r}; {hint}suntool runs BFCL v4's Python AST categories: "
        f"{', '.join(CATEGORIES)} (the live, multi-turn, Java/JavaScript and agentic ones are not offered)"
    )


def check_available(task: str) -> None:
    """SuntoolError saying how to fetch the data unless both files of `task`'s category are present."""
    root = data_dir()
    missing = [name for name in relative_files(category_of(task)) if not (root / name).is_file()]
    if missing:
        raise SuntoolError(f"the {task} task's data ({', '.join(missing)}) is not in {root}; {FETCH_HINT}")


def _read_lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_category(task: str) -> list[dict]:
    """The entries of one task, each `{"id", "question", "function", "ground_truth"}`, in file order."""
    check_available(task)
    questions_name, answers_name = relative_files(category_of(task))
    entries = _read_lines(data_dir() / questions_name)
    answers = {row["id"]: row["ground_truth"] for row in _read_lines(data_dir() / answers_name)}
    missing = [entry["id"] for entry in entries if entry["id"] not in answers]
    if missing:
        raise SuntoolError(f"{data_dir() / answers_name} has no answer for {missing[0]}; fetch the data again")
    return [{**entry, "ground_truth": answers[entry["id"]]} for entry in entries]


def fetch(dest: Path | None = None, wheel: Path | None = None) -> Path:
    """Download the `bfcl-eval` wheel without dependencies (or read `wheel`) and unpack the data of
    `CATEGORIES` into `dest` (default `data_dir()`), atomically; returns `dest`."""
    target = Path(dest) if dest is not None else data_dir()
    with tempfile.TemporaryDirectory(prefix="suntool-bfcl-") as tmp:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE, "-d", tmp]
            proc = subprocess.run(command, capture_output=True, text=True)  # noqa: S603 - pip, a fixed package
            wheels = sorted(Path(tmp).glob("bfcl_eval-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise SuntoolError(f"`{' '.join(command[2:])}` failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
            wheel = wheels[0]
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=_mkdir(target.parent)))
        try:
            with zipfile.ZipFile(wheel) as archive:
                for category in CATEGORIES.values():
                    for name in relative_files(category):
                        out = staging / name
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_bytes(archive.read(f"bfcl_eval/data/{name}"))
            (staging / "SOURCE.json").write_text(json.dumps({"wheel": Path(wheel).name, "package": PACKAGE}) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m suntool.evals.bfcl_data [DEST] [--wheel PATH]`: fetch the data, print where it went."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m suntool.evals.bfcl_data", description=fetch.__doc__)
    parser.add_argument("dest", nargs="?", type=Path, help=f"default: {data_dir()}")
    parser.add_argument("--wheel", type=Path, help="a bfcl_eval wheel already downloaded")
    parser.add_argument("--force", action="store_true", help="fetch again even if every file is there")
    args = parser.parse_args(argv)
    target = args.dest if args.dest is not None else data_dir()
    if not args.force and all((target / n).is_file() for c in CATEGORIES.values() for n in relative_files(c)):
        print(f"{target} (already there; --force fetches again)")
        return 0
    try:
        print(fetch(args.dest, args.wheel))
    except SuntoolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
