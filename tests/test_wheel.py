"""A built wheel (not only the editable install) installs the CLI under the suntool namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_help(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("suntool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    dist_info = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"
    assert top_level == {"suntool", dist_info, "suntool_lm_eval.pth"}  # no top-level kernels/commands/evals
    assert zipfile.ZipFile(wheel).read("suntool_lm_eval.pth").decode().startswith("import suntool.lm_eval_hook")
    for package in ("commands", "kernels", "evals"):
        assert f"suntool/{package}/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "suntool = suntool.cli:main" in entry_points
    assert "[lm_eval.models]" in entry_points and "suntool = suntool.lmeval:SuntoolLM" in entry_points

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )
    code = "import suntool, sys; print(suntool.__file__); from suntool.cli import main; main(['--help'])"
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))  # the wheel's copy, not the checkout
    for name in ("split", "finetune", "quantize", "eval", "serve", "bench", "generate", "info"):
        assert name in result.stdout
