"""Entry-point discovery of lm-eval models, so `lm_eval --model suntool` works after install.

suntool declares its lm-eval model the standard way, under the entry-point group
`lm_eval.models` (`suntool = "suntool.lmeval:SuntoolLM"`). lm-eval 0.4.13 does not scan
that group, so the install also drops `suntool_lm_eval.pth` into site-packages, whose one
line calls `install()` at interpreter start. `install()` is cheap (stdlib only): it puts a
meta-path finder in front that waits for `lm_eval.models` to be imported and then
registers every `lm_eval.models` entry point as a lazy placeholder in lm-eval's model
registry. Nothing of lm-eval or suntool's model code is imported until lm-eval asks for it.
Any failure here is swallowed: a broken hook must never break the interpreter.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys

GROUP = "lm_eval.models"


def register_entry_points() -> list[str]:
    """Register every `lm_eval.models` entry point with lm-eval's registry; return the names added."""
    from importlib.metadata import entry_points

    from lm_eval.api.registry import model_registry

    added = []
    for entry_point in entry_points(group=GROUP):
        if entry_point.name not in model_registry:
            model_registry.register(entry_point.name, target=entry_point)
            added.append(entry_point.name)
    return added


class _AfterLmEvalModels(importlib.abc.MetaPathFinder):
    """Wraps the loader of `lm_eval.models` so registration runs right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "lm_eval.models":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            with contextlib.suppress(Exception):  # never break lm-eval's own import
                register_entry_points()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Idempotently install the finder (called from suntool_lm_eval.pth)."""
    try:
        if any(isinstance(finder, _AfterLmEvalModels) for finder in sys.meta_path):
            return
        sys.meta_path.insert(0, _AfterLmEvalModels())
        if "lm_eval.models" in sys.modules:
            register_entry_points()
    except Exception:  # noqa: BLE001 - interpreter start-up must survive anything
        pass
