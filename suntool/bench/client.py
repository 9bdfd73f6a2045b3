"""Sending a planned load to an OpenAI-compatible server and timing every token (httpx streaming).

`run_load(url, planned)` sends each `PlannedRequest` at its time as a streaming
`/v1/completions` call (`ignore_eos`, `stream_options.include_usage`) and returns one
`RequestRecord` per request: when it was sent, when each text chunk arrived, when it
ended, the token counts the server reported, and the error if it failed. Timing is taken
on the client, so it includes HTTP and queueing: what a user sees.
"""

from __future__ import annotations

import asyncio
import json
import time
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


async def _one(client, url: str, request: PlannedRequest, start: float, headers: dict) -> RequestRecord:
    delay = start + request.at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)  # the arrival process: wait until this request's send time
    record = RequestRecord(model=request.model, sent=time.perf_counter(), max_tokens=request.max_tokens)
    body = {"model": request.model, "prompt": request.prompt, "max_tokens": request.max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0, "stream_options": {"include_usage": True}}
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
                if chunk.get("usage"):
                    record.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    record.output_tokens = chunk["usage"]["completion_tokens"]
        record.end = time.perf_counter()
    except Exception as err:  # a failed request is a result, not a crash of the benchmark
        record.error = f"{type(err).__name__}: {err}"
    return record


async def _run(base_url: str, planned: list[PlannedRequest], api_key: str | None, timeout: float):
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        start = time.perf_counter()
        url = base_url.rstrip("/") + "/v1/completions"
        records = await asyncio.gather(*(_one(client, url, r, start, headers) for r in planned))
    return start, list(records)


def run_load(base_url: str, planned: list[PlannedRequest], *, api_key: str | None = None,
             timeout: float = 600.0) -> tuple[float, list[RequestRecord]]:
    """Send the planned requests; returns (start time, records in plan order)."""
    return asyncio.run(_run(base_url, planned, api_key, timeout))


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
