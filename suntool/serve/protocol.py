"""The OpenAI wire format: request validation, response and stream-chunk bodies, error bodies.

`parse_request(body, chat=...)` turns a decoded JSON body of `/v1/completions` or
`/v1/chat/completions` into a frozen `GenerationRequest`, or raises `APIError(400, ...)`
naming the offending parameter. Supported: `model`, `prompt` (a string, one-element list,
or token ids) / `messages`, `max_tokens` (`max_completion_tokens` for chat), `temperature`,
`top_p`, `seed`, `stop`, `n` (1 only), `stream`, `stream_options.include_usage`, and two
vLLM-style extensions, `top_k` and `ignore_eos`. Parameters that would change the output
and are not implemented (`logprobs`, `echo`, `best_of`, penalties, `logit_bias`,
`suffix`, `tools`, JSON `response_format`) are refused with a 400 rather than ignored.

Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from suntool.serve.sequence import SamplingParams


class APIError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    chat: bool
    prompt: str | None = None  # completions with a text prompt
    prompt_ids: tuple[int, ...] | None = None  # completions with token ids
    messages: tuple[dict, ...] = ()  # chat
    max_tokens: int | None = None  # None: the endpoint's default
    params: dict = field(default_factory=dict)  # SamplingParams fields except max_tokens
    stream: bool = False
    include_usage: bool = False

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, **self.params)


_UNSUPPORTED_TRUTHY = ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools", "functions")
_UNSUPPORTED_NONZERO = ("presence_penalty", "frequency_penalty")


def _number(body: dict, name: str, *, low: float | None = None, high: float | None = None, integer: bool = False,
            low_open: bool = False):
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise bad_request(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise bad_request(f"'{name}' must be {'>' if low_open else '>='} {low}, got {value}", name)
    if high is not None and value > high:
        raise bad_request(f"'{name}' must be <= {high}, got {value}", name)
    return value


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}: only text content parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad_request(f"{where}.content must be a string or a list of text parts", "messages")


def parse_request(body: Any, *, chat: bool) -> GenerationRequest:
    """Validate a completions (chat=False) or chat completions body."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    for name in _UNSUPPORTED_TRUTHY:
        if body.get(name):
            raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    for name in _UNSUPPORTED_NONZERO:
        if _number(body, name):
            raise bad_request(f"'{name}' is not supported by this server (only 0)", name, "unsupported_parameter")
    if (_number(body, "best_of", low=1, integer=True) or 1) != 1:
        raise bad_request("'best_of' must be 1 on this server", "best_of", "unsupported_parameter")
    if (_number(body, "n", low=1, integer=True) or 1) != 1:
        raise bad_request("only n=1 is supported; send several requests for several completions", "n",
                          "unsupported_parameter")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise bad_request("only the text response_format is supported", "response_format", "unsupported_parameter")

    max_name = "max_tokens"
    if chat and body.get("max_completion_tokens") is not None:
        max_name = "max_completion_tokens"
    max_tokens = _number(body, max_name, integer=True)
    if max_tokens is not None and max_tokens <= 0:
        raise bad_request(f"'{max_name}' must be at least 1, got {max_tokens}", max_name)
    params: dict[str, Any] = {}
    temperature = _number(body, "temperature", low=0, high=2)
    if temperature is not None:
        params["temperature"] = float(temperature)
    top_p = _number(body, "top_p", low=0, high=1, low_open=True)
    if top_p is not None:
        params["top_p"] = float(top_p)
    top_k = _number(body, "top_k", integer=True)
    if top_k is not None:
        if top_k < -1:
            raise bad_request(f"'top_k' must be -1, 0 (off) or positive, got {top_k}", "top_k")
        params["top_k"] = max(top_k, 0)
    seed = _number(body, "seed", integer=True)
    if seed is not None:
        params["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
            raise bad_request("'stop' must be a string or a list of at most 4 strings", "stop")
        params["stop"] = tuple(s for s in stops if s)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("'ignore_eos' must be a boolean", "ignore_eos")
    params["ignore_eos"] = ignore_eos
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise bad_request("'stream_options' must be an object and needs stream=true", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))

    common = dict(model=model, chat=chat, max_tokens=max_tokens, params=params, stream=stream,
                  include_usage=include_usage)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list", "messages")
        clean = []
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise bad_request(f"{where} must be an object with a 'role'", "messages")
            clean.append({"role": message["role"], "content": _text_content(message.get("content"), where)})
        return GenerationRequest(messages=tuple(clean), **common)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' must not be empty", "prompt")
        return GenerationRequest(prompt=prompt, **common)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return GenerationRequest(prompt_ids=tuple(prompt), **common)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("batched prompts are not supported; send one prompt per request", "prompt")
    raise bad_request("'prompt' must be a non-empty string or a list of token ids", "prompt")


# -- response bodies ----------------------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, chat: bool, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(request_id: str, model: str, chat: bool, *, text: str | None = None, role: bool = False,
               finish_reason: str | None = None, include_usage: bool = False) -> dict:
    if chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    body = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}
    if include_usage:
        body["usage"] = None
    return body


def usage_chunk(request_id: str, model: str, chat: bool, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}
