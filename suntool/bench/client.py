"""Sending a planned load to an OpenAI-compatible server and timing every token (httpx streaming).

`run_load(target, planned)` sends each `PlannedRequest` at its time as a streaming
`/v1/completions` call (`ignore_eos`, `stream_options.include_usage`) and returns one
`RequestRecord` per request: when it was sent, when each text chunk arrived, when it
ended, the token counts the server reported, the answer's text, and the error if it
failed. Timing is taken on the client, so it includes HTTP and queueing: what a user sees.
`target` is one server URL, or a mapping model -> URL (one server per model, e.g. several
dedicated vLLM instances). A request with `after` (an agent pipeline) is sent when request
`after` ends, with the prompt it sent + its answer + its own prompt; if `after` failed, it is
not sent and records that. `read_metrics(url)` reads a server's Prometheus `/metrics`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from suntool.bench.workload import PlannedRequest


@dataclass
class RequestRecord:
    model: str
    sent: float
    max_tokens: int
    chunk_times: list[float] = field(default_factory=list)
    end: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    session: int | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and self.output_tokens > 0

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.sent if self.end is not None else None

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.end - self.chunk_times[0]) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


async def _one(client, url: str, request: PlannedRequest, start: float, headers: dict,
               prompt: str | None = None) -> RequestRecord:
    delay = start + request.at - time.perf_counter()
    if delay > 0 and request.after is None:
        await asyncio.sleep(delay)  # the arrival process: wait until this request's send time
    record = RequestRecord(model=request.model, sent=time.perf_counter(), max_tokens=request.max_tokens,
                           session=request.session)
    body = {"model": request.model, "prompt": request.prompt if prompt is None else prompt,
            "max_tokens": request.max_tokens, "stream": True, "ignore_eos": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    pieces = []
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {text[:200]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    record.error = chunk["error"].get("message", "error")
                    break
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    record.chunk_times.append(time.perf_counter())
                    pieces.append(chunk["choices"][0]["text"])
                if chunk.get("usage"):
                    record.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    record.output_tokens = chunk["usage"]["completion_tokens"]
        record.end = time.perf_counter()
    except Exception as err:  # a failed request is a result, not a crash of the benchmark
        record.error = f"{type(err).__name__}: {err}"
    record.text = "".join(pieces)
    return record


def _route(target: str | Mapping[str, str], model: str) -> str:
    base = target if isinstance(target, str) else target[model]
    return base.rstrip("/") + "/v1/completions"


async def _run(target: str | Mapping[str, str], planned: list[PlannedRequest], api_key: str | None,
               timeout: float):
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    prompts: dict[int, str] = {}  # plan index -> the prompt it was sent with (pipelines build on it)
    done: dict[int, asyncio.Future] = {}

    async def send(index: int, request: PlannedRequest, client, start: float) -> RequestRecord:
        prompt = request.prompt
        if request.after is not None:
            previous = await done[request.after]
            if not previous.ok:
                record = RequestRecord(model=request.model, sent=time.perf_counter(), max_tokens=request.max_tokens,
                                       session=request.session, error=f"not sent: agent request {request.after} failed")
                done[index].set_result(record)
                return record
            prompt = prompts[request.after] + previous.text + request.prompt
        prompts[index] = prompt
        record = await _one(client, _route(target, request.model), request, start, headers, prompt)
        done[index].set_result(record)
        return record

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        loop = asyncio.get_running_loop()
        for index in range(len(planned)):
            done[index] = loop.create_future()
        start = time.perf_counter()
        records = await asyncio.gather(*(send(i, r, client, start) for i, r in enumerate(planned)))
    return start, list(records)


def run_load(target: str | Mapping[str, str], planned: list[PlannedRequest], *, api_key: str | None = None,
             timeout: float = 600.0) -> tuple[float, list[RequestRecord]]:
    """Send the planned requests to `target` (a URL, or model -> URL); returns (start time, records in plan order)."""
    for index, request in enumerate(planned):
        if request.after is not None and not 0 <= request.after < index:
            raise ValueError(f"planned request {index} waits for request {request.after}, which is not before it")
    return asyncio.run(_run(target, planned, api_key, timeout))


def read_metrics(base_url: str, *, api_key: str | None = None, timeout: float = 10.0) -> dict[str, float] | None:
    """The server's Prometheus metrics (`parse_prometheus`), or None when it has no readable /metrics."""
    import httpx

    from suntool.bench.metrics import parse_prometheus

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(base_url.rstrip("/") + "/metrics", headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return None
    return parse_prometheus(response.text) if response.status_code == 200 else None


def list_models(base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> list[str]:
    import httpx

    from suntool.errors import SuntoolError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        raise SuntoolError(f"cannot reach {base_url}: {err}; is the server running?") from err
    if response.status_code == 401:
        raise SuntoolError(f"{base_url} wants an API key; pass --api-key")
    if response.status_code != 200:
        raise SuntoolError(f"{base_url}/v1/models answered HTTP {response.status_code}; is it an OpenAI API?")
    return [entry["id"] for entry in response.json()["data"]]
