"""Helpers of the `suntool deploy vllm` tests: a vLLM-sized tiny checkpoint, the vLLM python, references, metrics.

vLLM's CPU attention needs a head size of at least 32 (`tests/tiny_models.py` uses 16), so
the deployment tests build their own 2-layer Llama with head_dim 32. `reference(artifact,
prompt, n)` is `suntool generate`'s answer (`suntool.generation.generate_texts` on the plain
transformers path), the number every router answer is compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
from pathlib import Path

from tests.tiny_models import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, build_tokenizer

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("SUNTOOL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
# One prompt longer than vLLM's 128-token CPU block (its K/V crosses a block boundary), the rest short.
LONG_PROMPT = " ".join(str(i % 21) for i in range(150))
PROMPTS = ["Paris is the capital of France. Berlin", "def add(a, b):", LONG_PROMPT]


def build_vllm_checkpoint(dest: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    model.save_pretrained(dest)
    build_tokenizer().save_pretrained(dest)
    return dest


def reference(artifact: Path, prompt: str, max_tokens: int):
    from suntool.artifact import load_artifact
    from suntool.generation import generate_texts
    from suntool.handoff import SamplingConfig

    loaded = load_artifact(artifact, kernels=False)
    return generate_texts(loaded, [prompt], SamplingConfig(max_new_tokens=max_tokens))[0]


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def external_tokens(instance_url: str) -> float:
    """`vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}` of one vLLM instance."""
    with urllib.request.urlopen(instance_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:prompt_tokens_by_source_total") and 'source="external_kv_transfer"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def prompt_length(artifact: Path, prompt: str) -> int:
    from suntool.checkpoint import load_tokenizer

    return len(load_tokenizer(artifact / "prefill")(prompt)["input_ids"])


def count_matches(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def assert_same_answer(choice: dict, ref, where=None) -> None:
    """The router's answer is `suntool generate`'s: the same greedy tokens, finish reason and text.

    Random tiny models emit byte-level tokens that can end inside a UTF-8 character: suntool
    flushes it as U+FFFD at the end, vLLM's detokenizer holds it back; only that tail may differ.
    """
    if choice.get("token_ids") is not None:
        assert list(choice["token_ids"]) == list(ref.tokens), where
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    assert text == ref.text or (ref.text.endswith("\ufffd") and text == ref.text.rstrip("\ufffd")), (where, text)
    if choice.get("finish_reason") is not None:
        assert choice["finish_reason"] == ref.finish_reason, where


def stream_answer(chunks: list[dict]) -> dict:
    """One choice dict from a completions stream's chunks (text and token ids concatenated)."""
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    tokens = [t for c in chunks if c.get("choices") for t in (c["choices"][0].get("token_ids") or [])]
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")][-1]
    return {"text": text, "token_ids": tokens, "finish_reason": finish}


@contextlib.contextmanager
def running_deployment(artifacts, out: Path, *, base_port: int, **options):
    """Write and start a `suntool deploy vllm` plan of tiny fp32 artifacts; stop it on exit."""
    import pytest

    from suntool.deploy.files import write_plan
    from suntool.deploy.launch import Deployment
    from suntool.deploy.plan import DeployConfig, make_plan

    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: build it with `make vllm-venv` (make test-vllm does)")
    config = DeployConfig(artifacts=tuple(str(p) for p in artifacts), out=out, dtype="float32",
                          vllm_python=str(VLLM_PYTHON), enforce_eager=True, max_model_len=512, kv_cache_gib=1,
                          base_port=base_port, router_port=base_port - 1, **options)
    deployment = Deployment(write_plan(make_plan(config), config.out), start_timeout=600)
    deployment.start(router_port=0)
    try:
        yield deployment
    finally:
        deployment.stop()
