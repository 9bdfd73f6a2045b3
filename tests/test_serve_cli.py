"""`suntool serve` user errors: one red line and exit code 2, before any model is loaded where possible."""

from __future__ import annotations

import socket

import pytest

from suntool.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_serve_needs_local(capsys, llama_dir):
    code, err = run(capsys, "serve", str(llama_dir))
    assert code == 2 and "--local" in err and "Traceback" not in err


def test_serve_missing_artifact(capsys, tmp_path):
    code, err = run(capsys, "serve", "--local", str(tmp_path / "nope"), "--port", "0")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_serve_busy_port(capsys, llama_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, err = run(capsys, "serve", "--local", str(llama_dir), "--port", str(port))
    assert code == 2 and "choose another --port" in err


def test_serve_bad_mode_and_names(capsys, llama_dir):
    code, err = run(capsys, "serve", "--local", str(llama_dir), "--port", "0", "--mode", "nope")
    assert code == 2 and "--mode" in err
    code, err = run(capsys, "serve", "--local", str(llama_dir), "--port", "0", "--name", "a", "--name", "b")
    assert code == 2 and "--name" in err


def test_missing_optional_packages_are_a_user_error():
    from suntool.errors import SuntoolError
    from suntool.serve import require

    require({"json": "json"}, "suntool serve")
    with pytest.raises(SuntoolError, match=r"pip install 'suntool\[serve\]'"):
        require({"no_such_module_for_suntool": "no-such"}, "suntool serve")
