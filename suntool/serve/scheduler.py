"""The engine's threads: one prefill worker per prefill group, N decode workers (the engine owns them;
nothing here imports the engine). `PrefillGroup` / `DecodeGroup` are what the workers run: one half,
its models, and its `suntool.serve.runner.CompactLM` when the compact forward covers it;
`forward_tokens` runs some tokens of one sequence through a group's half over its blocks.

`PrefillWorker` owns a FIFO of waiting sequences for one prefill half. It takes the head,
waits until the pool has blocks for it (and, for new requests, a small watermark so
running sequences can grow), batches further new prompts behind it up to
`max_prefill_tokens` tokens (real tokens when the compact forward packs them, padded ones
otherwise), and runs them:

- new prompts without a prefix-cache hit: one left-padded `suntool.handoff.prefill` over
  the batch; its transformers cache is copied into the sequences' blocks;
- a prompt with a prefix-cache hit, or a preempted sequence being recomputed: alone,
  through a `PagedStepCache` (history read from its blocks, new K/V written into them);
  a recomputed sequence then catches up its generated tokens with its decode half, so
  its K/V is what it was before preemption.

Full blocks computed by a prefill half are registered in the prefix cache, salted with
the prefill group's identity, so hits happen across every model of a shared prefill.
Then the sequence goes to the least-loaded decode worker of its decode group.

Mixed steps (`EngineConfig.mixed_steps`, the default where the compact forward runs every half of a
prefill group's models): that group's `PrefillWorker` thread never starts; its queue is drained by
the decode workers (`PrefillWorker.take`), which run the prompt chunks in their own steps
(`DecodeWorker._mixed_step`): inside the decode forward where the chunk goes through the decode
half, in a forward of the prefill half just before otherwise. One thread then runs every forward.

`DecodeWorker` owns the sequences routed to it. Each iteration it admits its inbox,
drops aborted sequences, and per decode group runs ONE forward over up to `max_batch` of
its running sequences, whatever task model each belongs to (continuous batching: a
sequence joins at the next step after its prefill and leaves when it finishes). Before
the forward every sequence gets a slot for its new token; when the pool is out of blocks
the newest sequence of the worker is preempted (blocks freed, sent back to its prefill
worker for recompute) until the older ones fit.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suntool.serve.kv_blocks import OutOfBlocks, block_hashes

if TYPE_CHECKING:
    from suntool.serve.sequence import Sequence

log = logging.getLogger("suntool.serve")


@dataclass
class PrefillGroup:
    """One prefill half and the worker that runs it for its models."""

    key: str
    model: Any
    salt: str
    first_token: str
    pad_token_id: int
    prefix_cache: bool
    models: tuple[str, ...]
    runner: Any = None  # suntool.serve.runner.CompactLM, or None: transformers runs the model
    worker: Any = None

    def prefill_end(self, seq: Sequence) -> int:
        """Prompt tokens whose K/V the prefill half computes (all but the last under the decode convention)."""
        return len(seq.prompt_ids) - 1 if self.first_token == "decode" else len(seq.prompt_ids)


@dataclass
class DecodeGroup:
    """One decode half and the workers that may run its sequences."""

    key: str
    model: Any
    models: tuple[str, ...]
    runner: Any = None  # suntool.serve.runner.CompactLM, or None: transformers runs the model
    workers: list = field(default_factory=list)
    # mixed steps: prefill workers whose prompts this group's decode workers run inside their decode forwards
    prompt_sources: list = field(default_factory=list)


def forward_tokens(pool, group, seq: Sequence, start: int, end: int):
    """Run tokens[start:end] of one sequence over its cached history with `group`'s half (a prefill or
    decode group); their K/V land in its blocks. Returns the last token's logits [1, V]."""
    import torch

    if group.runner is not None:
        from suntool.serve.runner import extend_input

        return group.runner.forward(pool, extend_input(pool, [(seq, start, end)], logits=True))

    from suntool.handoff import forward_with_cache

    model = group.model
    tokens = seq.tokens[start:end]
    history = pool.history_slots([seq.block_table], [start])
    new_slots = pool.slots([seq.block_table], [start], end - start)
    device = model.device
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    mask = torch.ones((1, end), dtype=torch.long, device=device)
    return forward_with_cache(model, ids, mask, pool.step_cache(history, new_slots))[:, -1]


def _prefilling(seq: Sequence) -> bool:
    """Whether a decode worker is still computing `seq`'s prompt (mixed steps)."""
    worker = getattr(seq, "worker", None)
    return not seq.finished and worker is not None and seq in getattr(worker, "prefilling", ())


class PrefillWorker(threading.Thread):
    """Runs the prompts of one prefill group and hands the sequences to the decode pool."""

    def __init__(self, engine: Any, group: PrefillGroup):
        super().__init__(name=f"prefill:{group.key}", daemon=True)
        self.engine, self.group = engine, group
        self.queue: deque[Sequence] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        # mixed steps: the decode workers that take this queue's prompts (the thread itself then never runs)
        self.takers: list[DecodeWorker] = []
        # mixed steps: first prompt block -> the sequence being prefilled from it (see `take`)
        self.in_flight: dict[bytes, Sequence] = {}

    @property
    def mixed(self) -> bool:
        return bool(self.takers)

    # -- queue -----------------------------------------------------------------------------------
    def add(self, seq: Sequence, *, front: bool = False) -> None:
        with self.cond:
            (self.queue.appendleft if front else self.queue.append)(seq)
            self.cond.notify()
        for taker in self.takers:
            taker.wake()

    def take(self, decode: Any) -> tuple[Sequence | None, list[Sequence]]:
        """Mixed steps: pop the oldest prompt that decodes in group `decode` if blocks for all its tokens can be
        reserved now. Prompts of other decode groups stay queued for their own workers (a PrefillShare group's
        one queue feeds every task model's decode worker).

        Returns (the sequence or None, aborted sequences popped on the way: the caller finishes them).
        """
        aborted = []
        with self.cond:
            for seq in [s for s in self.queue if s.aborted]:
                self.queue.remove(seq)
                aborted.append(seq)
            head = next((s for s in self.queue if s.model.decode is decode), None)
            if head is None:
                return None, aborted
            self.in_flight = {d: s for d, s in self.in_flight.items() if _prefilling(s)}
            first = self._first_block(head)
            owner = self.in_flight.get(first) if first is not None else None
            if owner is not None and owner is not head and not self.engine.allocator.is_cached(first):
                # its prompt starts like one another worker (or this one) is prefilling now: wait until that
                # one's blocks are in the prefix cache and take them as hits, instead of computing them twice
                # (the agents:K:parallel workload: one context to K task models at once)
                return None, aborted
            if not self._reserve(head, wait=False, tokens=head.length):  # it then holds no prefix hits either
                return None, aborted
            self.queue.remove(head)
            if first is not None and first not in self.in_flight:
                self.in_flight[first] = head
            return head, aborted

    def _first_block(self, seq: Sequence) -> bytes | None:
        """The prefix-cache digest of the prompt's first block, when it could be cached (None otherwise)."""
        size = self.engine.allocator.block_size
        if not self.group.prefix_cache or len(seq.prompt_ids) - 1 < size:
            return None
        return block_hashes(seq.prompt_ids[:size], size, self.group.salt)[0]

    def has_prompts_for(self, decode: Any) -> bool:
        """Whether a queued prompt decodes in group `decode` (mixed steps)."""
        with self.cond:
            return any(s.model.decode is decode for s in self.queue)

    def remove(self, seq: Sequence) -> bool:
        """Take `seq` out of the queue if it is still there (the caller then owns it)."""
        with self.cond:
            try:
                self.queue.remove(seq)
            except ValueError:
                return False
            return True

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def __len__(self) -> int:
        return len(self.queue)

    # -- loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        import torch

        self.engine.init_thread()
        with torch.inference_mode():
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                try:
                    self._run_batch(batch)
                except Exception as err:  # a bug: fail these requests, keep serving the others
                    log.exception("prefill of %d sequences failed", len(batch))
                    for seq in batch:
                        self.engine.finish(seq, "error", error=err)

    def _pop(self) -> Sequence | None:
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            return self.queue.popleft()

    def _next_batch(self) -> list[Sequence] | None:
        engine = self.engine
        while True:
            head = self._pop()
            if head is None:
                return None
            if head.aborted:
                engine.finish(head, "abort")
                continue
            if not self._reserve(head, wait=True):
                if head.aborted:
                    engine.finish(head, "abort")
                    continue
                return None  # stopping
            batch = [head]
            if self._solo(head):
                return batch
            width, tokens = head.length, self._new_tokens(head)
            while len(batch) < engine.config.max_batch:
                with self.cond:
                    if not self.queue:
                        break
                    nxt = self.queue[0]
                    if self.group.runner is not None:  # packed: the budget counts real tokens, not padding
                        too_wide = tokens + self._new_tokens(nxt) > engine.config.max_prefill_tokens
                    else:
                        too_wide = max(width, nxt.length) * (len(batch) + 1) > engine.config.max_prefill_tokens
                    if nxt.aborted or nxt.output_ids or too_wide or not self._reserve(nxt, wait=False):
                        break
                    if self._solo(nxt):  # a prefix hit: it keeps its blocks and runs alone next
                        break
                    self.queue.popleft()
                batch.append(nxt)
                width, tokens = max(width, nxt.length), tokens + self._new_tokens(nxt)
            return batch

    def _new_tokens(self, seq: Sequence) -> int:
        return self.group.prefill_end(seq) - seq.prefix_hit_tokens

    def _solo(self, seq: Sequence) -> bool:
        """Recomputed sequences run alone; so do prefix-cache hits unless the compact forward packs them."""
        return bool(seq.output_ids) or (seq.prefix_hit_tokens > 0 and self.group.runner is None)

    def _reserve(self, seq: Sequence, *, wait: bool, tokens: int | None = None) -> bool:
        """Give `seq` its prefix-cache hits and blocks for its cached tokens (or the first `tokens`); wait for
        blocks if asked.

        While it waits, or when it fails without waiting, it holds nothing: hits it took here go back to
        the cache (still counted free, so still found on the next try). Hits held by a waiting prompt can
        starve the sequence whose blocks it waits for — a recomputed sequence preempted again and again
        while two prefill threads wait — and so every other prompt (measured:
        `test_out_of_blocks_preempts_and_recomputes_exactly` hung in 1 run of 3 with three prefill threads).

        A preempted sequence is recomputed only once blocks for its whole answer (prompt + `max_tokens`) are
        free: two such sequences on two decode workers, each able to preempt only its own, otherwise take
        turns preempting themselves forever (measured: 1 700 preemptions of the same two sequences)."""
        engine, allocator = self.engine, self.engine.allocator
        while True:
            matched = False
            if not seq.block_table and self.group.prefix_cache:
                # the last prompt token is always computed (the prefill convention needs its logits)
                cacheable = seq.prompt_ids[:-1]
                hits = allocator.match_prefix(block_hashes(cacheable, allocator.block_size, self.group.salt))
                seq.block_table = hits
                seq.prefix_hit_tokens = len(hits) * allocator.block_size
                matched = bool(hits)
            # K/V to hold: tokens[:length-1]; under the prefill convention a new prompt caches all of itself
            needed_tokens = max(seq.length - 1, self.group.prefill_end(seq)) if tokens is None else tokens
            if seq.output_ids:  # a preempted sequence comes back only with room to finish (see above)
                final = len(seq.prompt_ids) + seq.params.max_tokens - 1
                needed_tokens = max(needed_tokens, min(final, allocator.capacity * allocator.block_size))
            need = allocator.blocks_for(needed_tokens) - len(seq.block_table)
            reserve = 0 if seq.output_ids else min(engine.watermark, allocator.capacity - need)
            with engine.resources:
                if need <= 0 or allocator.num_free - need >= reserve:
                    try:
                        seq.block_table += allocator.allocate(max(need, 0))
                        return True
                    except OutOfBlocks:
                        pass
                if matched:  # wait (or stay queued) holding nothing (see above)
                    hits, seq.block_table, seq.prefix_hit_tokens = seq.block_table, [], 0
                    allocator.free(hits)
                    need += len(hits)
                    engine.resources.notify_all()
                if not wait:
                    return False
                engine.resources.wait_for(
                    lambda need=need, reserve=reserve: allocator.num_free - need >= reserve or seq.aborted
                    or self.stopping
                )
                if seq.aborted or self.stopping:
                    return False

    def _run_batch(self, batch: list[Sequence]) -> None:
        engine = self.engine
        for seq in batch:
            engine.scheduled(seq)
        with engine.computing():
            if len(batch) == 1 and self._solo(batch[0]):
                first_logits = self._run_paged(batch[0])
            elif self.group.runner is not None:
                first_logits = self._run_packed(batch)
            else:
                first_logits = self._run_handoff(batch)
        for row, seq in enumerate(batch):
            self.register_prefix(seq)
            if seq.aborted:
                engine.finish(seq, "abort")
                continue
            if first_logits is not None and not seq.output_ids:
                from suntool.serve.sampling import choose_tokens

                token = choose_tokens(first_logits[row : row + 1], [seq])[0]
                if engine.accept(seq, token):
                    continue
            engine.route(seq)

    def _run_handoff(self, batch: list[Sequence]):
        """New prompts, batched: `suntool.handoff.prefill` then copy its cache into the blocks."""
        import torch

        from suntool.handoff import prefill

        group, pool = self.group, self.engine.pool
        width = max(seq.length for seq in batch)
        ids = torch.full((len(batch), width), group.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, width - seq.length :] = torch.tensor(seq.prompt_ids)
            mask[row, width - seq.length :] = 1
        device = group.model.device
        handoff = prefill(group.model, ids.to(device), mask.to(device), first_token=group.first_token)
        cached = width - 1 if group.first_token == "decode" else width
        rows = []
        for seq in batch:
            count = group.prefill_end(seq)
            rows.append((cached - count, count, seq.block_table))
            seq.num_cached = count
            seq.prefix_blocks = count // pool.block_size if group.prefix_cache else 0
        pool.write_dynamic_cache(handoff.cache, rows, cached)
        return handoff.first_logits

    def _run_packed(self, batch: list[Sequence]):
        """New prompts (prefix hits included) through the compact forward, packed, in chunks of the token budget.

        A prompt longer than `max_prefill_tokens` is split across forwards (its later chunks read the
        earlier ones from its blocks), so no forward grows past the budget. Returns the first-token
        logits [len(batch), V] under the prefill convention, else None.
        """
        import torch

        from suntool.serve.runner import extend_input

        group, pool, budget = self.group, self.engine.pool, self.engine.config.max_prefill_tokens
        want_logits = group.first_token == "prefill"
        pieces: list[list[tuple[Sequence, int, int]]] = [[]]
        room = budget
        for seq in batch:
            start, end = seq.prefix_hit_tokens, group.prefill_end(seq)
            while start < end:
                if room == 0:
                    pieces.append([])
                    room = budget
                stop = min(end, start + room)
                pieces[-1].append((seq, start, stop))
                room -= stop - start
                start = stop
            seq.num_cached = end
            seq.prefix_blocks = end // pool.block_size if group.prefix_cache else 0
        last_logits: dict[int, torch.Tensor] = {}
        for piece in pieces:
            if not piece:
                continue
            logits = group.runner.forward(pool, extend_input(pool, piece, logits=want_logits))
            if logits is not None:
                for row, (seq, _, stop) in enumerate(piece):
                    if stop == group.prefill_end(seq):
                        last_logits[id(seq)] = logits[row]
        if not want_logits:
            return None
        return torch.stack([last_logits[id(seq)] for seq in batch])

    def _run_paged(self, seq: Sequence):
        """One sequence through the paged cache: the prompt after its prefix hit, then any catch-up."""
        group, first_logits = self.group, None
        start, end = seq.prefix_hit_tokens, group.prefill_end(seq)
        if end > start:
            logits = forward_tokens(self.engine.pool, group, seq, start, end)
            if group.first_token == "prefill":
                first_logits = logits
        seq.num_cached = end
        seq.prefix_blocks = end // self.engine.pool.block_size if group.prefix_cache else 0
        if seq.length - 1 > end:  # recompute after preemption: the decode half rebuilds the generated tokens' K/V
            forward_tokens(self.engine.pool, seq.model.decode, seq, end, seq.length - 1)
        if seq.output_ids:
            seq.num_cached = seq.length - 1
        return first_logits

    def register_prefix(self, seq: Sequence) -> None:
        """Offer the sequence's full prompt blocks (K/V now computed) to the prefix cache."""
        if not seq.prefix_blocks:
            return
        allocator = self.engine.allocator
        hashes = block_hashes(seq.prompt_ids[: seq.prefix_blocks * allocator.block_size], allocator.block_size,
                              self.group.salt)
        for block, digest in zip(seq.block_table, hashes, strict=False):
            allocator.register(block, digest)
        seq.prefix_blocks = 0


class DecodeWorker(threading.Thread):
    """Continuous batching over the sequences routed to it, one forward per decode group per step."""

    def __init__(self, engine: Any, index: int, groups: list[DecodeGroup]):
        super().__init__(name=f"decode:{index}", daemon=True)
        self.engine, self.index, self.groups = engine, index, groups
        self.inbox: list[Sequence] = []
        self.running: list[Sequence] = []
        self.prefilling: list[Sequence] = []  # mixed steps: prompts taken, K/V of tokens[:num_cached] computed
        self.source_turn = 0  # mixed steps: the prefill queue taken from first in the next step (round robin)
        self.cond = threading.Condition()
        self.stopping = False

    @property
    def load(self) -> int:
        return len(self.running) + len(self.inbox) + len(self.prefilling)

    def add(self, seq: Sequence) -> None:
        with self.cond:
            seq.worker = self
            self.inbox.append(seq)
            self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _prompts_waiting(self) -> bool:
        return any(source.has_prompts_for(group) for group in self.groups for source in group.prompt_sources)

    def run(self) -> None:
        import torch

        engine = self.engine
        engine.init_thread()
        with torch.inference_mode():
            while True:
                if not self.running and not self.prefilling:  # may wait now, and stops counting as busy
                    engine.engaged(False)
                with self.cond:
                    while (not self.inbox and not self.running and not self.prefilling and not self.stopping
                           and not self._prompts_waiting()):
                        self.cond.wait()
                    if self.stopping:
                        leftover = self.running + self.inbox + self.prefilling
                        self.running, self.inbox, self.prefilling = [], [], []
                        break
                    present = set(map(id, self.running))
                    self.running.extend(s for s in self.inbox if id(s) not in present)
                    self.inbox.clear()
                engine.engaged(bool(self.running or self.prefilling))  # prompts it only waits for: not busy
                for seq in [s for s in self.running + self.prefilling if s.aborted]:
                    (self.running if seq in self.running else self.prefilling).remove(seq)
                    engine.finish(seq, "abort")
                stepped_any = False
                for group in self.groups:
                    batch = [s for s in self.running if s.model.decode is group][: engine.config.max_batch]
                    if group.prompt_sources:
                        stepped_any |= self._mixed_step(group, batch)
                    elif batch:
                        self._step(group, batch)
                        stepped_any = True
                    if batch:  # round-robin when more sequences run than fit one forward
                        stepped = set(map(id, batch))
                        self.running = [s for s in self.running if id(s) not in stepped] + [
                            s for s in self.running if id(s) in stepped
                        ]
                self.running = [s for s in self.running if not s.finished and s.worker is self]
                if not stepped_any:  # prompts wait for blocks that other workers hold: wait for a free
                    with engine.resources:
                        engine.resources.wait(0.05)
        for seq in leftover:
            engine.finish(seq, "abort")

    def _preempt_for(self, seq: Sequence, ready: list[Sequence], preempted: set[int]) -> bool:
        """Free blocks by preempting the newest sequence of this worker; False if `seq` itself had to go.

        The victim leaves `running` here, before `engine.preempt` hands it to its prefill worker: that
        worker may recompute it and route it back to this worker's inbox before this step ends.
        """
        candidates = [s for s in self.running if not s.finished and s.worker is self]
        victim = max(candidates + [seq], key=lambda s: s.arrival)
        if victim in ready:
            ready.remove(victim)
        if victim in self.running:
            self.running.remove(victim)
        preempted.add(id(victim))
        self.engine.preempt(victim)
        return victim is not seq

    def _slots_for(self, batch: list[Sequence]) -> list[Sequence]:
        """The sequences of `batch` that got a pool slot for their next token (preempting others if needed)."""
        allocator = self.engine.allocator
        ready: list[Sequence] = []
        preempted: set[int] = set()  # ids preempted during this step: skipped even if already routed back
        for seq in sorted(batch, key=lambda s: s.arrival):
            if seq.finished or seq.worker is not self or id(seq) in preempted:
                continue
            while seq.num_cached // allocator.block_size >= len(seq.block_table):
                try:
                    seq.block_table += allocator.allocate(1)
                except OutOfBlocks:
                    if not self._preempt_for(seq, ready, preempted):
                        break
            if id(seq) not in preempted and not seq.finished:
                ready.append(seq)
        return ready

    def _fail(self, seqs: list[Sequence], err: Exception) -> None:
        for seq in seqs:
            for owner in (self.running, self.prefilling):
                if seq in owner:
                    owner.remove(seq)
            self.engine.finish(seq, "error", error=err)

    def _step(self, group: DecodeGroup, batch: list[Sequence]) -> None:
        engine = self.engine
        ready = self._slots_for(batch)
        if not ready:
            return
        try:
            with engine.computing():
                tokens = self._forward(group, ready)
        except Exception as err:  # a bug: fail this batch, keep serving
            log.exception("decode step over %d sequences failed", len(ready))
            self._fail(ready, err)
            return
        engine.observe_step(ready)
        for seq, token in zip(ready, tokens, strict=True):
            seq.num_cached += 1
            engine.accept(seq, token)

    # -- mixed steps -------------------------------------------------------------------------------
    @staticmethod
    def _next_chunk(group: DecodeGroup, seq: Sequence) -> tuple[Any, int, bool]:
        """Where a taken prompt goes next: (runner, token index to compute up to, whether its logits are wanted).

        Its prefill half's runner computes tokens up to `prefill_end` (the first token sampled there under the
        prefill convention); a recomputed sequence then catches up its generated tokens with the decode half.
        When the prefill half is the decode half, one runner computes everything, through the last token,
        whose logits give the next token.
        """
        prefill = seq.model.prefill
        if prefill.runner is group.runner:
            return group.runner, seq.length, True
        end = prefill.prefill_end(seq)
        if seq.num_cached < end:
            return prefill.runner, end, prefill.first_token == "prefill" and not seq.output_ids
        return group.runner, seq.length - 1, False

    def _prefilled(self, group: DecodeGroup, seq: Sequence) -> bool:
        """Whether a taken prompt's K/V is complete, so it decodes from the next step on."""
        if seq.model.prefill.runner is group.runner:  # one set of weights: any split point gives the same tokens
            return seq.num_cached >= seq.length - 1
        return self._next_chunk(group, seq)[1] <= seq.num_cached

    def _prompt_spans(self, group: DecodeGroup, rows: int) -> list[tuple[Sequence, int, int]]:
        """Prompt chunks to run in this step: the prompts already started first (oldest first), then new ones
        from the group's prefill queues (round robin over them), within the step's token budget
        (`max_prefill_tokens` less the decode rows, at least a quarter of it) and `max_batch` sequences."""
        engine, config = self.engine, self.engine.config
        room = max(config.max_prefill_tokens - rows, config.max_prefill_tokens // 4, 1)
        spans = []

        def plan(seq: Sequence) -> None:
            nonlocal room
            _, target, _ = self._next_chunk(group, seq)
            end = min(target, seq.num_cached + room)
            spans.append((seq, seq.num_cached, end))
            room -= end - seq.num_cached

        for seq in self.prefilling:
            if room <= 0:
                return spans
            plan(seq)
        seats = config.max_batch - len(self.running) - len(self.prefilling)
        sources, first = group.prompt_sources, self.source_turn % len(group.prompt_sources)
        self.source_turn += 1
        for source in sources[first:] + sources[:first]:
            while room > 0 and seats > 0:
                seq, aborted = source.take(group)
                for gone in aborted:
                    engine.finish(gone, "abort")
                if seq is None:
                    break
                engine.scheduled(seq)
                seq.worker = self
                seq.num_cached = seq.prefix_hit_tokens
                self.prefilling.append(seq)
                seats -= 1
                plan(seq)
        return spans

    def _mixed_step(self, group: DecodeGroup, batch: list[Sequence]) -> bool:
        """One step of this worker's thread: prompt chunks of the group's prefill queues and the decode rows.

        Chunks through the decode half (a prefill half that is the decode half, or a recomputed sequence
        catching up) run in the decode forward itself, packed behind its rows (vLLM's chunked prefill);
        chunks through another prefill half run in a forward of that half just before. Either way every
        forward of these models runs on this one thread, so one OpenMP team owns the cores. A sequence
        whose K/V is complete up to its last token decodes in this worker from the next step on.
        Returns False when there was nothing to run.
        """
        from suntool.serve.runner import mixed_input
        from suntool.serve.sampling import choose_tokens

        engine, pool = self.engine, self.engine.pool
        ready = self._slots_for(batch) if batch else []
        spans = self._prompt_spans(group, len(ready))
        if not ready and not spans:
            return False
        by_runner: dict[int, tuple[Any, list, list[bool]]] = {}
        for seq, start, end in spans:
            if end == start:  # a prefix-cache hit covered all of it: nothing to compute
                continue
            runner, target, wants_logits = self._next_chunk(group, seq)
            _, chunks, logits = by_runner.setdefault(id(runner), (runner, [], []))
            chunks.append((seq, start, end))
            logits.append(wants_logits and end == target)
        # the other prefill halves' forwards first, then the decode forward with its rows
        forwards = [(runner, [], chunks, logits) for runner, chunks, logits in by_runner.values()
                    if runner is not group.runner]
        _, chunks, logits = by_runner.get(id(group.runner), (None, [], []))
        if ready or chunks:
            forwards.append((group.runner, ready, chunks, logits))
        sampled: list[tuple[Sequence, int]] = []  # (sequence, token) of every row with logits
        try:
            with engine.computing():
                for runner, rows, chunks, logits in forwards:
                    out = runner.forward(pool, mixed_input(pool, rows, chunks, logits))
                    seqs = rows + [seq for (seq, _, _), want in zip(chunks, logits, strict=True) if want]
                    if seqs:
                        sampled += zip(seqs, choose_tokens(out, seqs), strict=True)
        except Exception as err:  # a bug: fail these sequences, keep serving
            log.exception("mixed step over %d decode rows and %d prompt chunks failed", len(ready), len(spans))
            self._fail(ready + [seq for seq, _, _ in spans], err)
            return True
        if ready:
            engine.observe_step(ready)
        for seq in ready:
            seq.num_cached += 1
        for seq, _, end in spans:
            seq.num_cached = end
        for seq, token in sampled:
            engine.accept(seq, token)
        for seq, _, _ in spans:
            if seq.finished and seq in self.prefilling:  # its first token ended it
                self.prefilling.remove(seq)
            if seq.finished or not self._prefilled(group, seq):
                continue
            self.prefilling.remove(seq)  # K/V complete up to its last token: it decodes from the next step on
            prefill = seq.model.prefill
            seq.prefix_blocks = prefill.prefill_end(seq) // pool.block_size if prefill.prefix_cache else 0
            prefill.worker.register_prefix(seq)
            engine.started(seq)
            self.running.append(seq)
        return True

    def _forward(self, group: DecodeGroup, ready: list[Sequence]) -> list[int]:
        import torch

        from suntool.handoff import forward_with_cache
        from suntool.serve.sampling import choose_tokens

        pool = self.engine.pool
        if group.runner is not None:
            from suntool.serve.runner import decode_input

            return choose_tokens(group.runner.forward(pool, decode_input(pool, ready)), ready)
        tables = [s.block_table for s in ready]
        lengths = [s.num_cached for s in ready]
        history = pool.history_slots(tables, lengths)
        new_slots = pool.slots(tables, lengths, 1)
        width = history.shape[1]
        length = torch.tensor(lengths)
        mask = (torch.arange(width + 1)[None, :] >= (width - length)[:, None]).long()
        ids = torch.tensor([s.output_ids[-1] if s.output_ids else s.prompt_ids[-1] for s in ready])[:, None]
        device = group.model.device
        logits = forward_with_cache(group.model, ids.to(device), mask.to(device), pool.step_cache(history, new_slots))
        return choose_tokens(logits[:, -1], ready)

