"""The paged KV cache: a block allocator, the tensor pool it indexes, and a transformers `Cache` over it.

`BlockAllocator` is pure bookkeeping (no torch): fixed-size blocks, reference counts, a
free list, and a prefix cache keyed by chained token-block hashes. A block whose last
reference goes away returns to the free list, or, when its content is registered in the
prefix cache, to an LRU of evictable blocks that a later prompt with the same prefix can
take back; allocation takes free blocks first and evicts the least recently used cached
ones next. `allocate` raises `OutOfBlocks` rather than over-committing; the scheduler then
waits or preempts. Block 0 is never handed out: gathers read it for left padding (it stays
zero), and block 1 is a write-only sink for the K/V of padding positions.

`KVPool` holds the tensors: per layer one key and one value tensor of shape
`[num_blocks * block_size, kv_heads, head_dim]`, addressed by slot (`block * block_size +
offset`). `PagedStepCache` is a `transformers.Cache` whose layers read a batch's history
from the pool (gathered left-padded, the layout `generate` uses, so sliding-window masks
stay right) and write the K/V of the new tokens straight back into the sequences' slots.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PAD_BLOCK = 0  # read for left padding; never written
SINK_BLOCK = 1  # written by padding positions; never read
RESERVED_BLOCKS = 2


class OutOfBlocks(Exception):
    """Not enough free KV blocks for an allocation (the scheduler waits or preempts)."""


def block_hashes(tokens: Sequence[int], block_size: int, salt: str) -> list[bytes]:
    """Chained hashes of every *full* block of `tokens`: block i's hash covers tokens[: (i+1)*block_size].

    `salt` separates caches that must not share K/V (another prefill module computed them).
    """
    hashes, parent = [], salt.encode()
    for start in range(0, len(tokens) - block_size + 1, block_size):
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(array("q", tokens[start : start + block_size]).tobytes())
        parent = digest.digest()
        hashes.append(parent)
    return hashes


class BlockAllocator:
    """Thread-safe allocation of KV blocks with reference counts and a prefix cache."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= RESERVED_BLOCKS:
            raise ValueError(f"need more than {RESERVED_BLOCKS} blocks, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._lock = threading.Lock()
        self._free: deque[int] = deque(range(RESERVED_BLOCKS, num_blocks))
        self._refs = [0] * num_blocks
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first

    @property
    def capacity(self) -> int:
        """Blocks that sequences can use (all but the reserved ones)."""
        return self.num_blocks - RESERVED_BLOCKS

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now: free plus cached-but-unreferenced."""
        with self._lock:
            return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        with self._lock:
            return self.capacity - len(self._free) - len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks whose content is registered in the prefix cache (referenced or not)."""
        with self._lock:
            return len(self._hash_of)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks (reference count 1), or `OutOfBlocks` without taking any."""
        with self._lock:
            if count > len(self._free) + len(self._evictable):
                raise OutOfBlocks(f"need {count} blocks, {len(self._free) + len(self._evictable)} free")
            blocks = []
            for _ in range(count):
                if self._free:
                    block = self._free.popleft()
                else:
                    block, _ = self._evictable.popitem(last=False)
                    del self._by_hash[self._hash_of.pop(block)]
                self._refs[block] = 1
                blocks.append(block)
            return blocks

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become free (or evictable if cached)."""
        with self._lock:
            for block in blocks:
                if self._refs[block] <= 0:
                    raise RuntimeError(f"block {block} freed more often than allocated")
                self._refs[block] -= 1
                if self._refs[block] == 0:
                    if block in self._hash_of:
                        self._evictable[block] = None
                    else:
                        self._free.append(block)

    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes`, each with a new reference."""
        with self._lock:
            blocks = []
            for digest in hashes:
                block = self._by_hash.get(digest)
                if block is None:
                    break
                if self._refs[block] == 0:
                    del self._evictable[block]
                self._refs[block] += 1
                blocks.append(block)
            return blocks

    def is_cached(self, digest: bytes) -> bool:
        """Whether a block with content `digest` is in the prefix cache."""
        with self._lock:
            return digest in self._by_hash

    def register(self, block: int, digest: bytes) -> None:
        """Record that `block` (referenced, full, never written again) holds the content hashed `digest`."""
        with self._lock:
            if self._refs[block] <= 0:
                raise RuntimeError(f"block {block} registered while unreferenced")
            if digest in self._by_hash or block in self._hash_of:
                return  # an identical block is cached already; this one stays private
            self._by_hash[digest] = block
            self._hash_of[block] = digest

    def refcount(self, block: int) -> int:
        with self._lock:
            return self._refs[block]


class KVPool:
    """Per-layer key/value tensors addressed by slot; built from a model config."""

    def __init__(self, *, num_layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 dtype, device="cpu"):
        import torch

        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.num_blocks, self.block_size = num_blocks, block_size
        slots = num_blocks * block_size
        self.keys = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.device, self.dtype = torch.device(device), dtype

    @staticmethod
    def geometry(config) -> dict:
        """num_layers / kv_heads / head_dim of a transformers config (the text config of a multimodal one)."""
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return {
            "num_layers": text.num_hidden_layers,
            "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
            "head_dim": getattr(text, "head_dim", None) or text.hidden_size // heads,
        }

    @staticmethod
    def bytes_per_block(geometry: dict, block_size: int, element_size: int) -> int:
        return 2 * geometry["num_layers"] * geometry["kv_heads"] * geometry["head_dim"] * block_size * element_size

    def slots(self, tables: Sequence[Sequence[int]], starts: Sequence[int], width: int) -> torch.Tensor:
        """Slot index [B, width] of positions starts[b] .. starts[b]+width-1 of each row's block table."""
        import torch

        bs = self.block_size
        out = torch.empty(len(tables), width, dtype=torch.long)
        for row, (table, start) in enumerate(zip(tables, starts, strict=True)):
            pos = torch.arange(start, start + width)
            blocks = torch.tensor(table, dtype=torch.long)[pos // bs]
            out[row] = blocks * bs + pos % bs
        return out.to(self.device)

    def history_slots(self, tables: Sequence[Sequence[int]], lengths: Sequence[int]) -> torch.Tensor:
        """Left-padded slot index [B, max(lengths)]: row b's positions 0..lengths[b]-1, right-aligned.

        Padding reads the zero block, so masked positions stay finite.
        """
        import torch

        bs, batch = self.block_size, len(tables)
        width = max(lengths, default=0)
        if width == 0:
            return torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        max_blocks = max(len(t) for t in tables)
        table = torch.full((batch, max(max_blocks, 1)), PAD_BLOCK, dtype=torch.long)
        for row, blocks in enumerate(tables):
            if blocks:
                table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
        length = torch.tensor(lengths, dtype=torch.long)
        rel = torch.arange(width)[None, :] - (width - length)[:, None]
        valid = rel >= 0
        rel = rel.clamp(min=0)
        slot = table.gather(1, rel // bs) * bs + rel % bs
        return torch.where(valid, slot, torch.full_like(slot, PAD_BLOCK * bs)).to(self.device)

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store keys/values [N, kv_heads, head_dim] into `slots` [N] of `layer`."""
        self.keys[layer].index_copy_(0, slots, keys.to(self.dtype))
        self.values[layer].index_copy_(0, slots, values.to(self.dtype))

    def step_cache(self, history: torch.Tensor, new_slots: torch.Tensor):
        """A `PagedStepCache` reading `history` [B, L] slots and writing new tokens into `new_slots` [B, q]."""
        return _paged_cache(self, history, new_slots)

    def write_dynamic_cache(self, cache, rows: Sequence[tuple[int, int, Sequence[int]]], width: int) -> None:
        """Copy a left-padded transformers cache of `width` positions into blocks.

        `rows[b] = (pad, count, table)`: row b holds `count` tokens at columns pad..width-1 and
        `table` is its block table. Layers that kept only a trailing window of columns (sliding
        attention) store what they hold; older slots of such layers are never read unmasked.
        """
        import torch

        bs = self.block_size
        for layer_index, layer in enumerate(cache.layers):
            if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
                continue
            held = layer.keys.shape[-2]
            first_column = width - held
            src, dst = [], []
            for row, (pad, count, table) in enumerate(rows):
                first_token = max(0, first_column - pad)
                if first_token >= count:
                    continue
                tokens = torch.arange(first_token, count)
                src.append(row * held + pad + tokens - first_column)
                blocks = torch.tensor(table, dtype=torch.long)[tokens // bs]
                dst.append(blocks * bs + tokens % bs)
            if not src:
                continue
            src_index, dst_index = torch.cat(src).to(self.device), torch.cat(dst).to(self.device)
            heads, dim = layer.keys.shape[1], layer.keys.shape[3]
            keys = layer.keys.transpose(1, 2).reshape(-1, heads, dim).index_select(0, src_index)
            values = layer.values.transpose(1, 2).reshape(-1, heads, dim).index_select(0, src_index)
            self.write(layer_index, dst_index, keys, values)


def _paged_cache(pool: KVPool, history: torch.Tensor, new_slots: torch.Tensor):
    from transformers.cache_utils import Cache

    layer_class = _paged_layer_class()
    return Cache(layers=[layer_class(pool, index, history, new_slots) for index in range(pool.num_layers)])


@functools.cache
def _paged_layer_class():
    import torch
    from transformers.cache_utils import DynamicLayer

    class PagedLayer(DynamicLayer):
        """One layer's view of the pool for one forward: gathered history + new tokens written back."""

        def __init__(self, pool: KVPool, index: int, history: torch.Tensor, new_slots: torch.Tensor):
            super().__init__()
            self.pool, self.index, self.history, self.new_slots = pool, index, history, new_slots
            self.length = history.shape[1]
            self.is_initialized = True
            self.device = pool.device

        def update(self, key_states, value_states, *args, **kwargs):
            pool, batch, heads, q, dim = self.pool, *key_states.shape
            flat = self.history.reshape(-1)
            past_k = pool.keys[self.index].index_select(0, flat).view(batch, -1, heads, dim).transpose(1, 2)
            past_v = pool.values[self.index].index_select(0, flat).view(batch, -1, heads, dim).transpose(1, 2)
            pool.write(
                self.index,
                self.new_slots.reshape(-1),
                key_states.transpose(1, 2).reshape(-1, heads, dim),
                value_states.transpose(1, 2).reshape(-1, heads, dim),
            )
            self.length += q
            self.keys = torch.cat([past_k.to(key_states.dtype), key_states], dim=2)
            self.values = torch.cat([past_v.to(value_states.dtype), value_states], dim=2)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return PagedLayer
