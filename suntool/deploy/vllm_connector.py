"""The suntool KV connector for vLLM's disaggregated prefill/decode (vLLM 0.32, v1 connector API).

Loaded *by vLLM*, not by suntool: a plan written by `suntool deploy vllm` copies this file
next to its launch scripts as `suntool_kv_connector.py`, puts that folder on `PYTHONPATH`
and names it in `--kv-transfer-config` (`"kv_connector": "SuntoolKVConnector",
"kv_connector_module_path": "suntool_kv_connector"`). It imports vLLM at module level
because it only ever runs inside a vLLM process.

It is vLLM's disk connector (`ExampleConnector`, whose per-layer save/inject code it
reuses) with three changes that a SUN or PrefillShare deployment needs:

* **Keyed by the prefill weights, not the prompt alone.** Stored K/V lives under
  `sha256(prompt[:-1] token ids + "suntool-kv:" + key)`, where `key` names the weights
  that computed it (the task prefill half's fingerprint, plus the LoRA adapter). The
  router sends the key with every request as `kv_transfer_params.suntool_kv_key`; a
  producer given none uses `kv_connector_extra_config.kv_key` (plus its LoRA name).
  Two task models given the same prompt therefore never read each other's K/V, while
  PrefillShare task models (one shared prefill half) do share it — that is the point.
  A consumer request without a key loads nothing and is simply recomputed.
* **Roles are one-way.** A `kv_producer` only stores, a `kv_consumer` only loads.
* **Every prompt token but the last, whatever the block size.** vLLM's CPU backend uses
  128-token blocks and `ExampleConnector` moves only whole blocks of `prompt[:-1]`, so a
  prompt of up to 128 tokens was silently recomputed by the decode instance — by the
  *shared* decode half, which is wrong for a task prefill. This connector stores and
  loads exactly `len(prompt) - 1` tokens (partial last block included; vLLM's scheduler
  accepts an unaligned external hit), so the decode instance computes only the last
  prompt token — suntool's `decode` first-token convention. A one-token prompt transfers
  nothing and is exact too. A producer stores a request once its whole prompt has been
  computed (chunked prefill included), then writes a `complete` marker (with the cache
  dtype); a consumer loads only a complete entry of its own dtype.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata, KVConnectorRole
from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import (
    ExampleConnector,
    ExampleConnectorMetadata,
    ReqMeta,
)
from vllm.logger import init_logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = init_logger(__name__)

KEY_PARAM = "suntool_kv_key"
KEY_TAG = "suntool-kv:"
MARKER = "complete"


def exact_meta(token_ids: list[int], block_ids: list[int], block_size: int, *, is_store: bool, key: str,
               mm_hashes: list[str]) -> ReqMeta:
    """A `ReqMeta` for exactly `token_ids` (no rounding down to whole blocks), tagged with `key`."""
    count = len(token_ids)
    blocks = torch.tensor(block_ids, dtype=torch.long)
    slots = (torch.arange(block_size).reshape(1, block_size) + blocks.reshape(-1, 1) * block_size).flatten()
    return ReqMeta(token_ids=torch.tensor(token_ids, dtype=torch.long), slot_mapping=slots[:count],
                   is_store=is_store, mm_hashes=[KEY_TAG + key, *mm_hashes])


class SuntoolKVConnector(ExampleConnector):
    """Disk K/V handoff keyed by the prefill weights; producer stores, consumer loads, `len(prompt)-1` tokens."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        config = self._kv_transfer_config
        self._producer = bool(config.is_kv_producer) and not config.is_kv_consumer
        self._consumer = bool(config.is_kv_consumer) and not config.is_kv_producer
        self._default_key = config.get_from_extra_config("kv_key", None)
        self._keys: dict[str, str] = {}  # request id -> key (scheduler side)
        self._pending_store: dict[str, tuple[list[int], list[int], str, list[str]]] = {}
        model_dtype = getattr(vllm_config.model_config, "dtype", None)
        auto_cache = getattr(vllm_config.cache_config, "cache_dtype", "auto") == "auto"
        self._kv_dtype = str(model_dtype) if auto_cache and model_dtype is not None else None
        self._saved_dtype: str | None = None
        os.makedirs(self._storage_path, exist_ok=True)

    # -- keys ---------------------------------------------------------------------------------------------------
    def _key_of(self, request: Request) -> str | None:
        params = request.kv_transfer_params or {}
        key = params.get(KEY_PARAM)
        if key is None and self._producer and self._default_key is not None:
            key = str(self._default_key)
            lora = getattr(request, "lora_request", None)
            if lora is not None:
                key += "+" + lora.lora_name
        return None if key is None else str(key)

    def _folder(self, token_ids: list[int], key: str, mm_hashes: list[str]) -> str:
        return self._generate_foldername_debug(torch.tensor(token_ids, dtype=torch.long), [KEY_TAG + key, *mm_hashes])

    def on_new_request(self, request: Request) -> None:
        key = self._key_of(request)
        if key is not None:
            self._keys[request.request_id] = key

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._keys.pop(request.request_id, None)
        self._pending_store.pop(request.request_id, None)
        self._requests_need_load.pop(request.request_id, None)
        return False, None

    # -- scheduler side -----------------------------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        if not self._consumer:
            return 0, False
        key = self._keys.get(request.request_id) or self._key_of(request)
        prompt = list(request.prompt_token_ids or [])
        wanted = len(prompt) - 1
        if key is None or wanted <= num_computed_tokens:
            return 0, False
        folder = self._folder(prompt[:wanted], key, [f.identifier for f in request.mm_features])
        marker = os.path.join(folder, MARKER)
        if not os.path.exists(marker):
            logger.warning("suntool connector: no stored K/V for request %s (key %s); recomputing its prompt",
                           request.request_id, key)
            return 0, False
        stored_dtype = _read_marker(marker).get("dtype")
        if self._kv_dtype is not None and stored_dtype not in (None, self._kv_dtype):
            logger.error("suntool connector: the K/V for request %s was stored as %s but this instance's cache is "
                         "%s; recomputing its prompt (give every instance of the deployment one --dtype)",
                         request.request_id, stored_dtype, self._kv_dtype)
            return 0, False
        self._keys[request.request_id] = key
        return wanted - num_computed_tokens, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int):
        if num_external_tokens > 0:
            self._requests_need_load[request.request_id] = request

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = ExampleConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new_req in scheduler_output.scheduled_new_reqs:
            prompt = list(new_req.prompt_token_ids or [])
            key = self._keys.get(new_req.req_id)
            mm_hashes = [f.identifier for f in new_req.mm_features]
            blocks = list(new_req.block_ids[0])
            if new_req.req_id in self._requests_need_load:
                meta.requests.append(exact_meta(prompt[:-1], blocks, self._block_size, is_store=False, key=key,
                                                mm_hashes=mm_hashes))
                self._requests_need_load.pop(new_req.req_id)
            elif self._producer and key is not None and len(prompt) > 1:
                done = new_req.num_computed_tokens + scheduled.get(new_req.req_id, 0) >= len(prompt)
                if done:
                    self._add_store(meta, prompt, blocks, key, mm_hashes)
                else:  # chunked prefill: store when the last chunk has been computed
                    self._pending_store[new_req.req_id] = (prompt, blocks, key, mm_hashes)

        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            new_blocks = cached.new_block_ids[i]
            if req_id in self._pending_store:
                prompt, blocks, key, mm_hashes = self._pending_store[req_id]
                if new_blocks is not None:
                    blocks = blocks + list(new_blocks[0])
                self._pending_store[req_id] = (prompt, blocks, key, mm_hashes)
                if cached.num_computed_tokens[i] + scheduled.get(req_id, 0) >= len(prompt):
                    self._pending_store.pop(req_id)
                    self._add_store(meta, prompt, blocks, key, mm_hashes)
            elif req_id in self._requests_need_load and req_id in cached.resumed_req_ids and new_blocks is not None:
                request = self._requests_need_load.pop(req_id)  # resumed after preemption: all its blocks are new
                prompt = list(request.prompt_token_ids or [])
                meta.requests.append(exact_meta(prompt[:-1], list(new_blocks[0]), self._block_size, is_store=False,
                                                key=self._keys[req_id],
                                                mm_hashes=[f.identifier for f in request.mm_features]))
        return meta

    def _add_store(self, meta, prompt: list[int], blocks: list[int], key: str, mm_hashes: list[str]) -> None:
        folder = self._folder(prompt[:-1], key, mm_hashes)
        if os.path.exists(os.path.join(folder, MARKER)):
            return  # the same weights already stored this prompt
        meta.requests.append(exact_meta(prompt[:-1], blocks, self._block_size, is_store=True, key=key,
                                        mm_hashes=mm_hashes))

    # -- worker side --------------------------------------------------------------------------------------------
    def _blocks(self, request: ReqMeta, device) -> torch.Tensor:
        """The blocks holding the request's transferred tokens, in order (the last one may be partly filled)."""
        return torch.unique_consecutive(request.slot_mapping.to(device) // self._block_size)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        """Store whole blocks, whatever their inner layout.

        vLLM's CPU backend packs a block's K and V rows in an ISA-specific layout, so a token's
        K/V cannot be cut out of it (ExampleConnector's `layer[blocks, :, offsets]` is right only
        because it copies whole blocks back byte for byte). A partial last block is therefore
        moved whole; its slots past the transferred tokens are rewritten by the decode instance
        (the last prompt token) or lie beyond the sequence and are never read.
        """
        metadata = self._get_connector_metadata()
        for request in metadata.requests:
            if request.is_store:
                self._saved_dtype = str(kv_layer.dtype)
                tensor = kv_layer[self._blocks(request, kv_layer.device)]
                filename = self._generate_filename_debug(layer_name, request.token_ids, request.mm_hashes)
                safetensors.torch.save_file({"kv_cache": tensor.detach().cpu().contiguous()}, filename)

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        metadata = self._get_connector_metadata()
        if forward_context.attn_metadata is None:
            return
        for request in metadata.requests:
            if request.is_store:
                continue
            logger.info("suntool connector: loading the K/V of %d prompt tokens", len(request.slot_mapping))
            for layer_name, layer in forward_context.no_compile_layers.items():
                kv_layer = getattr(layer, "kv_cache", None)
                if kv_layer is None:
                    continue
                filename = self._generate_filename_debug(layer_name, request.token_ids, request.mm_hashes)
                stored = safetensors.torch.load_file(filename)["kv_cache"].to(kv_layer.device)
                if stored.dtype != kv_layer.dtype or stored.shape[1:] != kv_layer.shape[1:]:
                    raise RuntimeError(
                        f"suntool connector: {filename} holds {stored.dtype} blocks of {tuple(stored.shape[1:])} but "
                        f"this instance's cache is {kv_layer.dtype} blocks of {tuple(kv_layer.shape[1:])}; every "
                        "instance of a deployment must run with one --dtype and block size")
                kv_layer[self._blocks(request, kv_layer.device)] = stored

    def wait_for_save(self):
        """After the forward: mark every entry saved in it complete (a consumer loads only complete ones)."""
        metadata = self._get_connector_metadata()
        for request in metadata.requests:
            if request.is_store:
                folder = self._generate_foldername_debug(request.token_ids, request.mm_hashes, create_folder=True)
                with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as handle:
                    json.dump({"tokens": len(request.token_ids), "dtype": self._saved_dtype}, handle)


def _read_marker(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
