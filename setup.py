"""Build hooks that pyproject.toml cannot express: install `suntool_lm_eval.pth`.

The .pth file makes `lm_eval --model suntool` work (see suntool/lm_eval_hook.py). It is
added to regular wheels (through build_py) and to editable installs (through the
editable_wheel strategy), so `pip install .` and `pip install -e .` both get it.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "suntool_lm_eval.pth"
PTH_LINE = "import suntool.lm_eval_hook; suntool.lm_eval_hook.install()\n"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        (Path(self.build_lib) / PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH_NAME)]


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        strategy = super()._select_strategy(name, tag, build_lib)

        class WithPth:
            def __call__(self, wheel, files, mapping):
                strategy(wheel, files, mapping)
                wheel.writestr(PTH_NAME, PTH_LINE)

            def __enter__(self):
                strategy.__enter__()
                return self

            def __exit__(self, *exc):
                return strategy.__exit__(*exc)

        return WithPth()


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
