"""Running a plan (`suntool deploy run`), with stand-in instances instead of vLLM: health wait, router, SIGTERM
stops every process; an instance that dies while starting is an error quoting its log, and nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from suntool.deploy.files import write_plan
from suntool.deploy.launch import Deployment
from suntool.deploy.plan import DeployConfig, make_plan
from suntool.errors import SuntoolError
from tests.test_deploy_plan import fake_python, sun_arts  # noqa: F401  (fixtures)

HEALTH_SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stand_in_plan(arts, python, out: Path, *, failing: str | None = None) -> Path:
    base = free_port()
    config = DeployConfig(artifacts=tuple(str(a) for a in arts), out=out, vllm_python=str(python),
                          base_port=base, router_port=free_port())
    plan = make_plan(config)
    written = write_plan(plan, out)
    server = written / "health_server.py"
    server.write_text(HEALTH_SERVER)
    for inst in plan.instances:
        body = ("echo boom; exit 3" if inst.name == failing
                else f"exec {sys.executable} {server} {inst.port}")
        (written / "instances" / f"{inst.name}.sh").write_text(f"#!/usr/bin/env bash\n{body}\n")
    return written


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_run_serves_the_router_and_sigterm_stops_everything(sun_arts, fake_python, tmp_path):  # noqa: F811
    plan_dir = stand_in_plan(sun_arts, fake_python, tmp_path / "plan")
    proc = subprocess.Popen([sys.executable, "-m", "suntool", "deploy", "run", str(plan_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "OpenAI endpoint" in line or not line:
                break
        assert "OpenAI endpoint" in lines[-1], "".join(lines)
        url = lines[-1].split("endpoint ")[1].split("/v1")[0]
        assert healthy(url)
        logs = sorted(p.name for p in (plan_dir / "logs").iterdir())
        assert logs == ["decode-0.log", "prefill-code.log", "prefill-math.log"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
        from suntool.deploy.plan import read_plan

        for inst in read_plan(plan_dir).instances:
            assert not healthy(inst.url), f"{inst.name} still answers after SIGTERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_an_instance_that_dies_while_starting_stops_everything(sun_arts, fake_python, tmp_path):  # noqa: F811
    plan_dir = stand_in_plan(sun_arts, fake_python, tmp_path / "plan", failing="decode-0")
    deployment = Deployment(plan_dir, start_timeout=60)
    with pytest.raises(SuntoolError, match=r"decode-0 exited with code 3(.|\n)*boom"):
        deployment.start()
    assert all(proc.poll() is not None for proc in deployment.procs.values())
    for inst in deployment.plan.instances:
        assert not healthy(inst.url)
