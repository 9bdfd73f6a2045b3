"""`suntool serve` as a real process: binds 127.0.0.1 by default, and SIGTERM drains in-flight
requests (a stream in progress runs to its end) before the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx

from tests.test_serve_engine import make_task_artifacts


def start_server(args: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    """Start `python -m suntool serve ...` and return it with the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "suntool", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    ready = threading.Event()
    found: dict[str, str] = {}

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "listening on " in line and not ready.is_set():
                found["url"] = line.rsplit("listening on ", 1)[1].strip()
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(180) and "url" in found, "".join(lines)
    return proc, found["url"], lines


def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_checkpoints, tmp_path):
    paths = make_task_artifacts(tiny_checkpoints["llama"], tmp_path, ["math", "code"])
    proc, url, lines = start_server(["--local", *map(str, paths), "--port", "0", "--decode-workers", "2",
                                       "--log-level", "info"])
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        body = {"model": "code", "prompt": "0 1 2 3", "max_tokens": 240, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            events = []
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 1:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 240  # the in-flight request was served to its end
        assert proc.wait(60) == 0, "".join(lines)
        log = "".join(lines)
        assert "Waiting for connections to close" in log  # uvicorn saw the stream still open at SIGTERM
        assert log.index("Waiting for connections to close") < log.index("suntool serve: stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
