"""Running a written plan as local processes: every instance's script, a health wait, the router.

`Deployment(plan_dir)` starts each `instances/<name>.sh` in its own process group (output in
`PLAN/logs/<name>.log`), waits until every instance answers `GET /health` (an instance that
exits or misses `start_timeout` is an error quoting the end of its log, and everything
started is stopped), then serves the router. `stop()` stops the router and sends SIGTERM to
every instance's process group, then SIGKILL to any still alive after `stop_timeout`.
`kill(name)` SIGKILLs one instance (tests: an instance dying mid-stream).

`run_plan(plan_dir, ...)` is `suntool deploy ... --run`: start, print the endpoint through
`on_ready`, serve the router in this thread until SIGTERM/SIGINT, then stop everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from suntool.deploy.plan import DeployPlan, read_plan
from suntool.errors import SuntoolError


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class Deployment:
    """The plan's instances as child process groups, plus the router."""

    def __init__(self, plan_dir: str | Path, *, start_timeout: float = 900.0, stop_timeout: float = 20.0,
                 progress: Callable[[str], None] | None = None):
        self.dir = Path(plan_dir).absolute()
        self.plan: DeployPlan = read_plan(self.dir)
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.progress = progress or (lambda message: None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.router = None

    def log(self, name: str) -> Path:
        return self.logs[name]

    def start_instances(self) -> None:
        busy = [i for i in self.plan.instances if _healthy(i.url)]
        if busy:
            raise SuntoolError(f"port {busy[0].port} ({busy[0].name}) already answers /health: another deployment "
                               "is running; stop it or write the plan with another --base-port")
        (self.dir / "logs").mkdir(exist_ok=True)
        try:
            for inst in self.plan.instances:
                self.logs[inst.name] = log = self.dir / "logs" / f"{inst.name}.log"
                with open(log, "wb") as handle:
                    self.procs[inst.name] = subprocess.Popen(
                        ["bash", str(self.dir / "instances" / f"{inst.name}.sh")], stdout=handle,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
                self.progress(f"started {inst.name} (pid {self.procs[inst.name].pid}, port {inst.port}, log {log})")
            self.wait_healthy()
        except BaseException:
            self.stop_instances()
            raise

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = {inst.name: inst for inst in self.plan.instances}
        while waiting:
            for name, inst in list(waiting.items()):
                code = self.procs[name].poll()
                if code is not None:
                    raise SuntoolError(f"the vLLM instance {name} exited with code {code} while starting; the end "
                                       f"of {self.logs[name]}:\n{log_tail(self.logs[name])}")
                if _healthy(inst.url):
                    self.progress(f"{name} is ready")
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                name = next(iter(waiting))
                raise SuntoolError(f"{', '.join(waiting)} not healthy after {self.start_timeout:g} s; the end of "
                                   f"{self.logs[name]}:\n{log_tail(self.logs[name])}")
            time.sleep(1.0)

    def start(self, *, router_port: int | None = None, api_key: str | None = None) -> Deployment:
        """Instances, then the router in a background thread (port 0: a free one)."""
        from suntool.deploy.router import BackgroundRouter

        self.start_instances()
        try:
            port = self.plan.router_port if router_port is None else router_port
            self.router = BackgroundRouter(self.plan, host=self.plan.host, port=port, api_key=api_key)
            self.router.start()
        except BaseException:
            self.stop_instances()
            raise
        return self

    @property
    def url(self) -> str:
        return self.router.url

    def kill(self, name: str) -> None:
        """SIGKILL one instance's process group at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def stop_instances(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():  # the group too: vLLM's engine core and workers are children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
            self.router = None
        self.stop_instances()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_plan(plan_dir: str | Path, *, api_key: str | None = None, progress: Callable[[str], None] | None = None,
             on_ready: Callable[[str, DeployPlan], None] | None = None, start_timeout: float = 900.0) -> None:
    """Start the instances, serve the router here until SIGTERM/SIGINT, stop everything."""
    from suntool.deploy.router import serve_router

    deployment = Deployment(plan_dir, start_timeout=start_timeout, progress=progress)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)  # while starting; uvicorn installs its own after
    try:
        deployment.start_instances()
        signal.signal(signal.SIGTERM, previous)
        serve_router(deployment.plan, host=deployment.plan.host, port=deployment.plan.router_port, api_key=api_key,
                     on_ready=(lambda url: on_ready(url, deployment.plan)) if on_ready else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        deployment.stop_instances()
