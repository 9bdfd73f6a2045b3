"""suntool.serve: the OpenAI-compatible server over a shared decode pool (see docs/serving.md).

Modules: `engine` (Engine, EngineConfig), `scheduler` (prefill and decode workers), `kv_blocks`
(block allocator, paged pool, paged transformers Cache), `models` (which halves are shared),
`sequence`, `sampling`, `protocol` (OpenAI wire format), `metrics` (Prometheus), `app` (FastAPI +
uvicorn). Importing this package imports nothing heavy.
"""

from __future__ import annotations

import importlib.util

SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client"}
BENCH_PACKAGES = {"httpx": "httpx", "matplotlib": "matplotlib"}


def require(packages: dict[str, str], what: str) -> None:
    """Raise a SuntoolError naming the pip packages `what` needs when any is missing."""
    missing = [pip for module, pip in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        from suntool.errors import SuntoolError

        raise SuntoolError(f"{what} needs {', '.join(missing)}; install them with: pip install 'suntool[serve]'")
