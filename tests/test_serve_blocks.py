"""The block manager and the paged pool: allocation, freeing, running out, prefix cache, slot layout."""

from __future__ import annotations

import pytest
import torch

from suntool.serve.kv_blocks import RESERVED_BLOCKS, BlockAllocator, KVPool, OutOfBlocks, block_hashes


def test_allocate_and_free_track_counts():
    allocator = BlockAllocator(10, 4)
    assert allocator.capacity == 10 - RESERVED_BLOCKS and allocator.num_free == allocator.capacity
    blocks = allocator.allocate(3)
    assert len(set(blocks)) == 3 and all(b >= RESERVED_BLOCKS for b in blocks)
    assert allocator.num_used == 3 and allocator.num_free == allocator.capacity - 3
    allocator.free(blocks)
    assert allocator.num_used == 0 and allocator.num_free == allocator.capacity
    with pytest.raises(RuntimeError, match="freed more often"):
        allocator.free(blocks[:1])


def test_out_of_blocks_takes_nothing():
    allocator = BlockAllocator(6, 4)
    held = allocator.allocate(3)
    with pytest.raises(OutOfBlocks):
        allocator.allocate(2)
    assert allocator.num_free == 1 and allocator.num_used == 3
    allocator.free(held[:1])
    assert len(allocator.allocate(2)) == 2 and allocator.num_free == 0


def test_reserved_blocks_are_never_handed_out():
    allocator = BlockAllocator(RESERVED_BLOCKS + 5, 2)
    blocks = allocator.allocate(5)
    assert min(blocks) >= RESERVED_BLOCKS
    with pytest.raises(OutOfBlocks):
        allocator.allocate(1)


def test_block_hashes_chain_and_salt():
    a = block_hashes(list(range(10)), 4, "m")
    b = block_hashes(list(range(8)) + [99, 98, 97], 4, "m")
    assert len(a) == 2 and a == b[:2]  # only full blocks; same prefix, same hashes
    assert block_hashes([9, 1, 2, 3, 4, 5, 6, 7], 4, "m")[1] != a[1]  # a block's hash covers its whole prefix
    assert block_hashes(list(range(8)), 4, "other") != a  # another prefill module: no sharing


def test_prefix_cache_reuses_evicts_and_revives():
    allocator = BlockAllocator(RESERVED_BLOCKS + 4, 4)
    hashes = block_hashes(list(range(12)), 4, "m")
    first = allocator.allocate(3)
    for block, digest in zip(first, hashes, strict=True):
        allocator.register(block, digest)
    hit = allocator.match_prefix(hashes[:2] + [b"unknown"])
    assert hit == first[:2] and allocator.refcount(first[0]) == 2
    allocator.free(first)
    allocator.free(hit)
    assert allocator.num_used == 0 and allocator.num_cached == 3 and allocator.num_free == 4
    again = allocator.match_prefix(hashes)  # unreferenced but cached blocks come back
    assert again == first and allocator.num_used == 3
    allocator.free(again)
    taken = allocator.allocate(4)  # pressure: the free block first, then the oldest cached ones
    assert set(first) <= set(taken) and allocator.num_cached == 0
    assert allocator.match_prefix(hashes) == []


def test_history_slots_are_left_padded_and_roundtrip():
    pool = KVPool(num_layers=1, kv_heads=2, head_dim=3, num_blocks=8, block_size=2, dtype=torch.float32)
    tables, lengths = [[3, 5], [4]], [3, 1]
    slots = pool.history_slots(tables, lengths)
    assert slots.tolist() == [[6, 7, 10], [0, 0, 8]]  # row 1: two pad reads of the zero block, then its token
    new = pool.slots(tables, lengths, 1)
    assert new.tolist() == [[11], [9]]
    values = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3)
    pool.write(0, new[:, 0], values, -values)
    assert torch.equal(pool.keys[0][11], values[0]) and torch.equal(pool.values[0][9], -values[1])
    assert pool.keys[0][0].abs().sum() == 0


def test_paged_cache_reads_history_and_writes_new_tokens():
    pool = KVPool(num_layers=2, kv_heads=1, head_dim=2, num_blocks=6, block_size=2, dtype=torch.float32)
    table = [2, 3]
    for position in range(3):
        slot = pool.slots([table], [position], 1)[0]
        pool.write(0, slot, torch.full((1, 1, 2), float(position + 1)), torch.zeros(1, 1, 2))
    cache = pool.step_cache(pool.history_slots([table], [3]), pool.slots([table], [3], 1))
    assert cache.get_seq_length() == 3
    new = torch.full((1, 1, 1, 2), 9.0)
    keys, _ = cache.update(new, new, 0)
    assert keys[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0, 9.0]
    assert cache.get_seq_length() == 4
    assert pool.keys[0][pool.slots([table], [3], 1)[0]].flatten().tolist() == [9.0, 9.0]
