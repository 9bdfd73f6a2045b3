"""The serving engine: task models, a paged KV pool, prefill workers and a shared decode pool.

    engine = Engine.from_artifacts(["art/math", "art/code"], config=EngineConfig(decode_workers=2))
    seq = engine.submit("math", prompt_ids, SamplingParams(max_tokens=32), sink)   # sink(SequenceEvent)
    engine.abort(seq)        # frees its blocks at the next step boundary
    engine.stats()           # EngineStats: queue, blocks, batching, preemptions
    engine.close()

Every request goes: `submit` (admission: known model, fits the context, queue not full)
→ its model's `PrefillWorker` (prompt K/V into paged blocks) → the least-loaded
`DecodeWorker` of its decode group, which batches it with the running sequences of every
model in that group, one token per forward, until EOS, a stop string, `max_tokens` or the
context length. Events reach `sink` from engine threads; `sink` must return quickly. With
mixed steps (the default on the compact forward) the decode worker runs the prompt too, inside
or just before its decode forward, so one thread runs every forward (one OpenMP team: see
`keep_this_thread_serial` for why that matters).

Threads, not processes (measured, see docs/serving.md): torch releases the GIL inside
its ops, so prefill and decode workers run concurrently in one process, and the K/V
handoff is a copy into a shared tensor pool instead of an IPC transfer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError
from suntool.serve.scheduler import DecodeGroup, DecodeWorker, PrefillGroup, PrefillWorker
from suntool.serve.sequence import SamplingParams, Sequence, SequenceEvent

if TYPE_CHECKING:
    from suntool.serve.models import LoadedPlan

log = logging.getLogger("suntool.serve")


class UnknownModel(SuntoolError):
    """The request names a model this engine does not serve."""


class RequestTooLong(SuntoolError):
    """The prompt (plus the tokens asked for) does not fit the model's context."""


class QueueFull(SuntoolError):
    """Admission control: too many requests are waiting already."""


class EngineClosed(SuntoolError):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine is laid out and sized (the `suntool serve` flags)."""

    decode_workers: int = 1
    share: bool = True  # False: the --no-share baseline (dedicated prefill and decode per model)
    mode: str | None = None  # "sun" | "prefillshare"; None: whatever the artifacts are
    kv_blocks: int | None = None  # None: as many as `kv_memory_gib` holds, at most 4096
    block_size: int = 16
    kv_memory_gib: float = 1.0
    max_model_len: int | None = None  # None: the model's context, capped by the KV pool
    max_queue: int = 256  # waiting (not yet decoding) requests before QueueFull
    max_batch: int = 64  # sequences per decode forward and per prefill batch
    # tokens per prefill forward (packed on the compact path, padded on the transformers one); small enough
    # that a burst of prompts reaches the decode pool in several waves, not all after the last one
    max_prefill_tokens: int = 512
    prefix_cache: bool = True
    dtype: str | None = None  # None: bf16 on CPUs with bf16 matmul, float32 on other CPUs, as stored elsewhere
    device: str = "cpu"
    allow_mismatch: bool = False
    torch_threads: int | None = None  # intra-op threads per busy engine thread; None: cores // busy threads
    compact: bool = True  # run supported halves through suntool.serve.runner (False: transformers' modules)
    release_dense_weights: bool = True  # drop dense weights the compact forward holds packed (one copy, not two)
    # run prompts on the decode workers' threads (one thread runs every forward, one OpenMP team owns the
    # cores): inside the decode forward where the prefill half is the decode half (vLLM's chunked prefill),
    # else in a forward of the prefill half just before; False: a prefill thread per prefill half
    mixed_steps: bool = True

    def validate(self) -> None:
        checks = [
            (self.decode_workers >= 1, f"--decode-workers must be at least 1, got {self.decode_workers}"),
            (self.block_size >= 1, f"--block-size must be at least 1, got {self.block_size}"),
            (self.kv_blocks is None or self.kv_blocks >= 1, f"--kv-blocks must be at least 1, got {self.kv_blocks}"),
            (self.max_queue >= 1, f"--max-queue must be at least 1, got {self.max_queue}"),
            (self.max_batch >= 1, f"--max-batch must be at least 1, got {self.max_batch}"),
            (self.max_prefill_tokens >= 1, f"--max-prefill-tokens must be at least 1, got {self.max_prefill_tokens}"),
            (self.max_model_len is None or self.max_model_len >= 2,
             f"--max-model-len must be at least 2, got {self.max_model_len}"),
            (self.torch_threads is None or self.torch_threads >= 1,
             f"--torch-threads must be at least 1, got {self.torch_threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SuntoolError(message)


class EngineObserver:
    """Hooks the server's metrics implement; called from engine threads, must be quick."""

    def on_admitted(self, seq: Sequence) -> None: ...
    def on_scheduled(self, seq: Sequence) -> None: ...
    def on_first_token(self, seq: Sequence) -> None: ...
    def on_finish(self, seq: Sequence) -> None: ...
    def on_step(self, batch_size: int, num_models: int) -> None: ...


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_cached: int
    decode_steps: int
    mixed_model_steps: int  # decode forwards whose batch held sequences of two or more task models
    max_models_in_step: int
    max_batch_size: int
    preemptions: int
    prefix_hit_tokens: int
    prompt_tokens: int
    generated_tokens: int
    finished: int
    aborted: int


@dataclass
class ServedModel:
    """A task model as the API exposes it."""

    name: str
    ref: Any
    tokenizer: Any
    tokenizer_lock: threading.Lock
    prefill: PrefillGroup
    decode: DecodeGroup
    eos_ids: frozenset[int]
    max_model_len: int
    has_chat_template: bool

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: list[dict]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


THREAD_LINGER_S = 1.0  # an engine thread counts as busy this long after its last forward (see `computing`)


def default_dtype(config: EngineConfig) -> tuple[str | None, str]:
    """The dtype the halves load in, and why: `--dtype`, else what the device runs best."""
    if config.dtype:
        return config.dtype, "--dtype"
    if config.device != "cpu":
        return None, f"the checkpoints' own dtype on {config.device}"
    from suntool.hardware import best_cpu_dtype

    return best_cpu_dtype()


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _has_sliding_layers(model) -> bool:
    from transformers import DynamicCache

    return any(DynamicCache(config=model.config).is_sliding)


def _context_limit(model) -> int | None:
    config = model.config.get_text_config(decoder=True)
    return getattr(config, "max_position_embeddings", None)


def keep_this_thread_serial() -> int:
    """One intra-op thread for the calling (server) thread, before it loads anything: the engine's compute
    threads own the cores.

    Measured on a 2-core AVX2 machine (docs/performance.md): once a second OS thread has run a parallel
    torch op, libgomp counts more managed threads than CPUs and stops spin-waiting at its barriers, and
    every small op of a decode step then pays a futex wake-up — a batch-64 step of SmolLM2-135M went
    ~240 → ~300 ms. Call it on a thread that will load an engine and then only wait or parse requests
    (the server, `suntool bench --profile`): loading is single-threaded (~2 s more for a 135M model).
    Returns the thread's previous intra-op thread count (to restore once its engine is closed).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


class Engine:
    """Serves several task models over one paged KV pool; see the module docstring."""

    def __init__(self, loaded: LoadedPlan, config: EngineConfig | None = None,
                 observer: EngineObserver | None = None):
        import torch

        from suntool.serve.kv_blocks import RESERVED_BLOCKS, BlockAllocator, KVPool

        config = config or EngineConfig()
        config.validate()
        self.config, self.loaded, self.observer = config, loaded, observer or EngineObserver()
        from suntool.kernel_path import enable_kernels, keep_only_cpu_int4_packs
        from suntool.serve.runner import CompactLM

        runners: dict[int, Any] = {}
        for model in loaded.weights.values():  # norms, rotary, decode attention, w4a16 via suntool.kernels
            enable_kernels(model, strict=False)
            keep_only_cpu_int4_packs(model)  # bf16 4-bit halves on CPU: hold the int4 pack, not qweight too
            runners[id(model)] = (CompactLM.build(model, release=config.release_dense_weights)
                                  if config.compact else None)
        plan = loaded.plan
        self.mode, self.share = plan.mode, plan.share
        self.cores = _usable_cores()
        self._in_forward: set[int] = set()  # engine threads inside a forward now (see `computing`)
        self._engaged: set[int] = set()  # decode workers with running sequences, between forwards too
        self._last_forward: dict[int, float] = {}  # engine thread -> when its last forward ended

        first = loaded.group_model(plan.models[0].decode_group)
        geometry = KVPool.geometry(first.config)
        dtype = first.dtype
        if config.kv_blocks is not None:
            num_blocks = config.kv_blocks + RESERVED_BLOCKS
        else:
            per_block = KVPool.bytes_per_block(geometry, config.block_size, torch.empty((), dtype=dtype).element_size())
            num_blocks = max(8, min(4096, int(config.kv_memory_gib * 2**30 // per_block))) + RESERVED_BLOCKS
        self.allocator = BlockAllocator(num_blocks, config.block_size)
        self.pool = KVPool(**geometry, num_blocks=num_blocks, block_size=config.block_size, dtype=dtype,
                           device=first.device)
        self.watermark = max(1, self.allocator.capacity // 100)
        self.resources = threading.Condition()  # notified whenever blocks are freed

        self.prefill_groups: dict[str, PrefillGroup] = {}
        self.decode_groups: dict[str, DecodeGroup] = {}
        self.models: dict[str, ServedModel] = {}
        capacity_tokens = self.allocator.capacity * config.block_size
        for spec in plan.models:
            tokenizer = loaded.tokenizers[spec.name]
            prefill_spec = plan.groups[spec.prefill_group]
            if spec.prefill_group not in self.prefill_groups:
                model = loaded.group_model(spec.prefill_group)
                self.prefill_groups[spec.prefill_group] = PrefillGroup(
                    key=spec.prefill_group, model=model, salt=spec.prefill_group, runner=runners[id(model)],
                    first_token=spec.ref.manifest.handoff.first_token,
                    pad_token_id=tokenizer.pad_token_id or 0,
                    prefix_cache=config.prefix_cache and not _has_sliding_layers(model),
                    models=prefill_spec.models,
                )
            if spec.decode_group not in self.decode_groups:
                decode_model = loaded.group_model(spec.decode_group)
                self.decode_groups[spec.decode_group] = DecodeGroup(
                    key=spec.decode_group, model=decode_model, models=plan.groups[spec.decode_group].models,
                    runner=runners[id(decode_model)],
                )
            prefill, decode = self.prefill_groups[spec.prefill_group], self.decode_groups[spec.decode_group]
            limits = [n for n in (_context_limit(prefill.model), _context_limit(decode.model)) if n]
            model_limit = min(limits) if limits else capacity_tokens
            if config.max_model_len is not None and config.max_model_len > model_limit:
                raise SuntoolError(
                    f"--max-model-len {config.max_model_len} exceeds {spec.name}'s context of {model_limit} tokens"
                )
            max_model_len = min(config.max_model_len or model_limit, capacity_tokens)
            eos = decode.model.generation_config.eos_token_id if decode.model.generation_config else None
            eos = eos if eos is not None else tokenizer.eos_token_id
            eos_ids = frozenset(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
            self.models[spec.name] = ServedModel(
                name=spec.name, ref=spec.ref, tokenizer=tokenizer, tokenizer_lock=threading.Lock(),
                prefill=prefill, decode=decode, eos_ids=eos_ids, max_model_len=max_model_len,
                has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            )

        self._lock = threading.Lock()
        self._live: set[Sequence] = set()
        self._counts = dict(waiting=0, running=0, decode_steps=0, mixed_model_steps=0, max_models_in_step=0,
                            max_batch_size=0, preemptions=0, prefix_hit_tokens=0, prompt_tokens=0,
                            generated_tokens=0, finished=0, aborted=0)
        self._closed = False

        groups = list(self.decode_groups.values())
        workers = [DecodeWorker(self, i, []) for i in range(config.decode_workers)]
        if len(groups) == 1:
            assignment = {0: list(range(len(workers)))}
        elif len(workers) >= len(groups):
            assignment = {g: [w for w in range(len(workers)) if w % len(groups) == g] for g in range(len(groups))}
        else:
            assignment = {g: [g % len(workers)] for g in range(len(groups))}
        for g, worker_ids in assignment.items():
            for w in worker_ids:
                groups[g].workers.append(workers[w])
                workers[w].groups.append(groups[g])
        self.decode_workers = workers
        for group in self.prefill_groups.values():
            group.worker = PrefillWorker(self, group)
            if config.mixed_steps:
                self._mix(group)
        for thread in [g.worker for g in self.prefill_groups.values() if not g.worker.mixed] + workers:
            thread.start()

    def _mix(self, prefill: PrefillGroup) -> None:
        """Hand `prefill`'s prompts to the decode workers of its models when the compact forward runs all halves."""
        decodes = {id(m.decode): m.decode for m in self.models.values() if m.prefill is prefill}
        if prefill.runner is None or any(d.runner is None for d in decodes.values()):
            return
        for decode in decodes.values():
            decode.prompt_sources.append(prefill.worker)
            prefill.worker.takers.extend(w for w in decode.workers if w not in prefill.worker.takers)

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_artifacts(cls, paths: list[str], *, names: list[str] | None = None, config: EngineConfig | None = None,
                       observer: EngineObserver | None = None, progress: Callable[[str], None] | None = None):
        from suntool.serve.models import load_plan, plan_models

        config = config or EngineConfig()
        config.validate()
        plan = plan_models([str(p) for p in paths], names=names, share=config.share, mode=config.mode,
                           allow_mismatch=config.allow_mismatch)
        dtype, why = default_dtype(config)
        if progress is not None:
            progress(f"dtype {dtype or 'as stored'}: {why}")
        loaded = load_plan(plan, dtype=dtype, device=config.device, progress=progress)
        return cls(loaded, config, observer)

    # -- requests ------------------------------------------------------------------------------------------------
    def model(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"the model {name!r} does not exist; this server has {sorted(self.models)}") from None

    def check_fits(self, model: ServedModel, prompt_tokens: int, max_tokens: int) -> None:
        """Raise RequestTooLong unless `prompt_tokens + max_tokens` fit the model's context."""
        limit = model.max_model_len
        if prompt_tokens < 1:
            raise RequestTooLong("the prompt is empty; send at least one token")
        if prompt_tokens + max_tokens > limit:
            raise RequestTooLong(
                f"this model's maximum context length is {limit} tokens, but {prompt_tokens + max_tokens} were "
                f"requested ({prompt_tokens} in the prompt, {max_tokens} for the completion); "
                "shorten the prompt or lower max_tokens"
            )

    def submit(self, model_name: str, prompt_ids: list[int], params: SamplingParams,
               sink: Callable[[SequenceEvent], None]) -> Sequence:
        """Admit a request; events go to `sink`. Raises UnknownModel, RequestTooLong, QueueFull, EngineClosed."""
        from suntool.generation import RowText

        model = self.model(model_name)
        self.check_fits(model, len(prompt_ids), params.max_tokens)
        seq = Sequence(model=model, prompt_ids=list(prompt_ids), params=params, sink=sink)
        seq.text = RowText(model.tokenizer, params.stop)
        with self._lock:
            if self._closed:
                raise EngineClosed("the server is shutting down; retry against another instance")
            if self._counts["waiting"] >= self.config.max_queue:
                raise QueueFull(f"{self._counts['waiting']} requests are waiting already (--max-queue); retry later")
            self._counts["waiting"] += 1
            self._counts["prompt_tokens"] += len(prompt_ids)
            self._live.add(seq)
        seq.stage = "waiting"
        self.observer.on_admitted(seq)
        model.prefill.worker.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Stop a request (client gone); its blocks are freed by the thread that owns it, or here."""
        if seq.finished:
            return
        seq.aborted = True
        if seq.stage == "waiting" and seq.model.prefill.worker.remove(seq):
            self.finish(seq, "abort")
            return
        worker = seq.worker
        if worker is not None:
            worker.wake()
        with self.resources:
            self.resources.notify_all()

    # -- called by the workers -----------------------------------------------------------------------------------
    def init_thread(self) -> None:
        """Per-thread torch setup: intra-op threads are set per OS thread (measured: docs/serving.md)."""
        import torch

        torch.set_num_threads(self.config.torch_threads or 1)

    @contextlib.contextmanager
    def computing(self):
        """Around one forward of an engine thread: its intra-op threads share the cores with the other busy ones.

        With `--torch-threads N` every thread uses N. Otherwise a thread alone takes every core, and k
        busy threads take cores // k each. Busy means inside a forward, a decode worker with running
        sequences (see `engaged`: it is back in a forward within milliseconds), or a thread whose last
        forward ended less than `THREAD_LINGER_S` ago (prompts keep arriving): a forward that starts
        while another runs cannot shrink the other's OpenMP team, and teams that oversubscribe the cores
        collapse. Measured (docs/serving.md): counting only the threads inside a forward made TPOT
        ×1.6 at 1 req/s (×1.2 at 2); with the lingering count a busy server splits the cores and a server
        that only decodes (saturation) still gets every core.
        """
        import torch

        me = threading.get_ident()
        with self._lock:
            self._in_forward.add(me)
            now = time.monotonic()
            recent = {t for t, end in self._last_forward.items() if now - end < THREAD_LINGER_S}
            busy = len(self._in_forward | self._engaged | recent | {me})
        threads = self.config.torch_threads or max(1, self.cores // busy)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            with self._lock:
                self._in_forward.discard(me)
                self._last_forward[me] = time.monotonic()

    def engaged(self, has_work: bool) -> None:
        """A decode worker says, from its own thread, whether it has running sequences (see `computing`)."""
        me = threading.get_ident()
        with self._lock:
            if has_work:
                self._engaged.add(me)
            else:
                self._engaged.discard(me)

    def scheduled(self, seq: Sequence) -> None:
        first = seq.scheduled is None
        if first:
            seq.scheduled = time.perf_counter()
        with self._lock:
            self._counts["prefix_hit_tokens"] += seq.prefix_hit_tokens
        if first:
            self.observer.on_scheduled(seq)

    def route(self, seq: Sequence) -> None:
        """Hand a prefilled sequence to the least-loaded decode worker of its group."""
        worker = min(seq.model.decode.workers, key=lambda w: w.load)
        self.started(seq)
        worker.add(seq)

    def started(self, seq: Sequence) -> None:
        """Count a prefilled sequence as running (it is about to decode)."""
        with self._lock:
            self._counts["waiting"] -= 1
            self._counts["running"] += 1
        seq.stage = "running"

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and queue it for recompute at the front of its prefill worker."""
        blocks, seq.block_table = seq.block_table, []
        seq.num_cached = seq.prefix_hit_tokens = seq.prefix_blocks = 0
        seq.worker = None
        seq.preemptions += 1
        self.allocator.free(blocks)
        with self._lock:
            self._counts["running"] -= 1
            self._counts["waiting"] += 1
            self._counts["preemptions"] += 1
        seq.stage = "waiting"
        seq.model.prefill.worker.add(seq, front=True)
        with self.resources:
            self.resources.notify_all()

    def observe_step(self, batch: list[Sequence]) -> None:
        models = len({seq.model.name for seq in batch})
        with self._lock:
            counts = self._counts
            counts["decode_steps"] += 1
            counts["mixed_model_steps"] += models > 1
            counts["max_models_in_step"] = max(counts["max_models_in_step"], models)
            counts["max_batch_size"] = max(counts["max_batch_size"], len(batch))
        self.observer.on_step(len(batch), models)

    def accept(self, seq: Sequence, token: int) -> bool:
        """Append a generated token, emit its text; True when that finished the sequence."""
        now = time.perf_counter()
        seq.output_ids.append(token)
        seq.pending_tokens.append(token)
        if seq.first_token is None:
            seq.first_token = now
            self.observer.on_first_token(seq)
        seq.last_token = now
        with self._lock:
            self._counts["generated_tokens"] += 1
        model, params = seq.model, seq.params
        with model.tokenizer_lock:
            delta = seq.text.push(token)
        reason = None
        if not params.ignore_eos and token in model.eos_ids or seq.text.stopped:
            reason = "stop"
        elif len(seq.output_ids) >= params.max_tokens or seq.length >= model.max_model_len:
            reason = "length"
        if reason is not None:
            self.finish(seq, reason, text=delta)
            return True
        if seq.aborted:
            return False
        if delta:
            ids, seq.pending_tokens = tuple(seq.pending_tokens), []
            self._emit(seq, SequenceEvent(text=delta, token_ids=ids))
        return False

    def finish(self, seq: Sequence, reason: str, *, text: str = "", error: Exception | None = None) -> None:
        """End a sequence (owner thread only): free its blocks, count it, send the last event."""
        if seq.finished:
            return
        seq.finished, seq.finish_reason, seq.finish_time = True, reason, time.perf_counter()
        if reason in ("stop", "length"):
            with seq.model.tokenizer_lock:
                text += seq.text.flush()
        blocks, seq.block_table = seq.block_table, []
        if blocks:
            self.allocator.free(blocks)
        with self._lock:
            self._counts[seq.stage] -= 1
            self._counts["aborted" if reason == "abort" else "finished"] += 1
            self._live.discard(seq)
        seq.stage = "done"
        with self.resources:
            self.resources.notify_all()
        self.observer.on_finish(seq)
        ids, seq.pending_tokens = tuple(seq.pending_tokens), []
        self._emit(seq, SequenceEvent(text=text, token_ids=ids, finish_reason=reason if error is None else "error",
                                      prompt_tokens=len(seq.prompt_ids), completion_tokens=len(seq.output_ids)))

    def _emit(self, seq: Sequence, event: SequenceEvent) -> None:
        try:
            seq.sink(event)
        except Exception:  # a sink that fails must not take an engine thread down
            log.exception("the event sink of %s failed", seq.request_id)

    # -- state ---------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the server's start-up: dtype, which halves run the compact forward, threads."""
        groups = [*self.prefill_groups.values(), *self.decode_groups.values()]
        compact = sum(group.runner is not None for group in groups)
        threads = self.config.torch_threads or f"{self.cores} shared by busy threads"
        mixed = sum(group.worker.mixed for group in self.prefill_groups.values())
        runners = {id(group.runner): group.runner for group in groups if group.runner is not None}
        released = sum(runner.released_bytes for runner in runners.values())
        packed = f" · weights prepacked, {released / 2**30:.2f} GiB of dense copies released" if released else ""
        return (f"dtype {self.pool.dtype} · compact forward on {compact}/{len(groups)} groups "
                f"(others through transformers){packed} · prompts on the decode threads for {mixed}/"
                f"{len(self.prefill_groups)} prefill groups · torch threads {threads}")

    def stats(self) -> EngineStats:
        allocator = self.allocator
        with self._lock:
            counts = dict(self._counts)
        return EngineStats(
            kv_blocks_total=allocator.capacity, kv_blocks_used=allocator.num_used, kv_blocks_free=allocator.num_free,
            kv_blocks_cached=allocator.num_cached, **counts,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, abort what is left, stop and join the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
        for seq in live:
            self.abort(seq)
        threads = [g.worker for g in self.prefill_groups.values()] + self.decode_workers
        for thread in threads:
            thread.stop()
        with self.resources:
            self.resources.notify_all()
        for thread in threads:
            if thread.ident is not None:  # a mixed prefill worker's thread never started
                thread.join(timeout)
        for seq in list(self._live):  # in a prefill queue when its worker stopped
            self.finish(seq, "abort")
