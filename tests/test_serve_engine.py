"""The serving engine: per-request equality with `generate_texts`, cross-model batching, preemption,
sliding windows, PrefillShare prefix hits, the --no-share baseline, aborts and the load-time refusals.

`make_task_artifacts` (also used by the other serve tests) stands in for fine-tuning: it copies
a split artifact and perturbs its task half, recording the new fingerprint and the shared half
it was "trained against", so task models really differ while sharing one half.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from suntool.artifact import load_artifact
from suntool.errors import ArtifactError, SuntoolError
from suntool.generation import generate_texts
from suntool.handoff import SamplingConfig
from suntool.manifest import MANIFEST_NAME, read_manifest
from suntool.serve.engine import Engine, EngineConfig, EngineObserver, QueueFull, RequestTooLong, UnknownModel
from suntool.serve.sequence import SamplingParams
from suntool.split import SplitConfig, split

PROMPTS = [
    "Paris is the capital of France. Berlin",
    "def add(a, b):",
    "Question: what is 12 plus 30? Answer:",
    "0 1 2 3 4 5 6 7 8 9 10 11",
]


def make_task_artifacts(checkpoint: Path, root: Path, names: list[str], *, mode: str = "sun") -> list[Path]:
    """Split `checkpoint` once per name and perturb each copy's task half differently."""
    from safetensors.torch import load_file, save_file

    from suntool.fingerprint import fingerprint_checkpoint

    base = root / f"base-{mode}"
    if not base.exists():
        split(SplitConfig(model=str(checkpoint), out=base, mode=mode))
    out = []
    for seed, name in enumerate(names):
        target = root / name
        shutil.copytree(base, target)
        manifest = read_manifest(target)
        task = "prefill" if mode == "sun" else "decode"
        shared = manifest.half("decode" if task == "prefill" else "prefill")
        directory = manifest.half(task).resolve(target)
        weights = directory / "model.safetensors"
        tensors = load_file(weights)
        generator = torch.Generator().manual_seed(100 + seed)
        for key, tensor in tensors.items():
            if tensor.ndim == 2:
                tensors[key] = tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
        weights.unlink()  # the copy may be a hardlink into the store
        save_file(tensors, weights, metadata={"format": "pt"})
        entry = replace(manifest.half(task), sha256=fingerprint_checkpoint(directory), trained_against=shared.sha256)
        (target / MANIFEST_NAME).write_text(manifest.with_half(task, entry).to_json(), encoding="utf-8")
        out.append(target)
    return out


class Collector:
    """A sink per request that gathers its events and signals completion."""

    def __init__(self, count: int):
        self.events: dict[object, list] = {}
        self.remaining = count
        self.lock = threading.Lock()
        self.done = threading.Event()

    def sink(self, key):
        def receive(event):
            with self.lock:
                self.events.setdefault(key, []).append(event)
                if event.finish_reason is not None:
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.done.set()

        return receive

    def wait(self, timeout: float = 60.0) -> None:
        assert self.done.wait(timeout), "the engine did not finish every request in time"

    def result(self, key) -> tuple[list[int], str, str]:
        events = self.events[key]
        return [t for e in events for t in e.token_ids], "".join(e.text for e in events), events[-1].finish_reason


def run_all(engine: Engine, jobs: list[tuple[str, str]], params: SamplingParams) -> Collector:
    collector = Collector(len(jobs))
    for model, prompt in jobs:
        ids = engine.models[model].encode(prompt, add_special_tokens=True)
        engine.submit(model, ids, params, collector.sink((model, prompt)))
    collector.wait()
    return collector


def assert_matches_reference(collector: Collector, artifacts: dict[str, Path], prompts, max_tokens: int) -> None:
    for name, path in artifacts.items():
        loaded = load_artifact(path, kernels=False)  # the plain transformers path is the reference
        for prompt in prompts:
            reference = generate_texts(loaded, [prompt], SamplingConfig(max_new_tokens=max_tokens))[0]
            tokens, text, reason = collector.result((name, prompt))
            assert tokens == list(reference.tokens), (name, prompt)
            assert text == reference.text and reason == reference.finish_reason


@pytest.fixture(scope="module")
def sun_artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-engine")
    return dict(zip(["math", "code", "chat"], make_task_artifacts(tiny_checkpoints["llama"], root,
                                                                   ["math", "code", "chat"]), strict=True))


def test_task_models_really_differ(sun_artifacts):
    outputs = {
        name: generate_texts(load_artifact(path), PROMPTS[:2], SamplingConfig(max_new_tokens=8))[0].tokens
        for name, path in sun_artifacts.items()
    }
    assert len(set(outputs.values())) == 3


@pytest.mark.parametrize("mixed_steps", [True, False], ids=["prompts-on-decode-thread", "prefill-threads"])
def test_concurrent_requests_of_several_models_equal_generate_alone(sun_artifacts, mixed_steps):
    config = EngineConfig(decode_workers=1, mixed_steps=mixed_steps)
    engine = Engine.from_artifacts(list(sun_artifacts.values()), config=config)
    try:
        jobs = [(name, prompt) for prompt in PROMPTS for name in sun_artifacts]
        collector = run_all(engine, jobs, SamplingParams(max_tokens=16))
        stats = engine.stats()
    finally:
        engine.close()
    assert_matches_reference(collector, sun_artifacts, PROMPTS, 16)
    # one shared decode group: forwards mixed sequences of different task models
    assert len(engine.decode_groups) == 1 and len(engine.prefill_groups) == 3
    assert stats.mixed_model_steps > 0 and stats.max_models_in_step >= 2
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0


@pytest.mark.parametrize("mixed_steps", [True, False], ids=["prompts-on-decode-thread", "prefill-threads"])
def test_out_of_blocks_preempts_and_recomputes_exactly(sun_artifacts, mixed_steps):
    config = EngineConfig(decode_workers=2, kv_blocks=14, block_size=4, mixed_steps=mixed_steps)
    engine = Engine.from_artifacts(list(sun_artifacts.values()), config=config)
    try:
        jobs = [(name, prompt) for prompt in PROMPTS for name in sun_artifacts]
        collector = run_all(engine, jobs, SamplingParams(max_tokens=20))
        stats = engine.stats()
    finally:
        engine.close()
    assert stats.preemptions > 0
    assert_matches_reference(collector, sun_artifacts, PROMPTS, 20)
    assert stats.kv_blocks_used == 0 and stats.finished == len(jobs)


def test_a_preempted_sequence_comes_back_only_with_room_to_finish(sun_artifacts):
    """Recompute admission: blocks for prompt + max_tokens, not just the tokens so far. Otherwise two sequences
    that do not fit together, on two decode workers that each preempt only their own, preempt themselves in
    turn forever (the hang `test_out_of_blocks_preempts_and_recomputes_exactly` hit one run in three)."""
    from suntool.serve.sequence import Sequence

    engine = Engine.from_artifacts([sun_artifacts["math"]], config=EngineConfig(kv_blocks=14, block_size=4))
    try:
        model = engine.models[next(iter(engine.models))]
        worker, allocator = model.prefill.worker, engine.allocator
        seq = Sequence(model=model, prompt_ids=list(range(100, 110)), params=SamplingParams(max_tokens=30),
                       sink=lambda event: None)
        seq.output_ids = [7, 8]  # preempted after two tokens: 12 tokens so far (3 blocks), 39 at most (10)
        held = allocator.allocate(allocator.num_free - 9)
        assert not worker._reserve(seq, wait=False) and seq.block_table == []
        allocator.free(held[:1])
        assert worker._reserve(seq, wait=False) and len(seq.block_table) == 10
        allocator.free(seq.block_table + held[1:])
    finally:
        engine.close()


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text"])
def test_sliding_window_models_stay_exact(arch, tiny_checkpoints, tmp_path):
    artifacts = dict(zip(["a", "b"], make_task_artifacts(tiny_checkpoints[arch], tmp_path, ["a", "b"]), strict=True))
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(block_size=4, kv_blocks=40))
    try:
        collector = run_all(engine, [(n, p) for p in PROMPTS for n in artifacts], SamplingParams(max_tokens=20))
        prefix_cache = [group.prefix_cache for group in engine.prefill_groups.values()]
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 20)  # prompts and outputs run past the window of 8
    assert prefix_cache == [False, False]  # sliding layers keep only a window: no prefix reuse


def test_prefillshare_hits_the_prefix_cache_across_models(tiny_checkpoints, tmp_path):
    paths = make_task_artifacts(tiny_checkpoints["qwen3"], tmp_path, ["x", "y"], mode="prefillshare")
    artifacts = dict(zip(["x", "y"], paths, strict=True))
    engine = Engine.from_artifacts(paths, config=EngineConfig(block_size=4))
    prompt = PROMPTS[0] + " " + PROMPTS[2]
    try:
        assert len(engine.prefill_groups) == 1 and len(engine.decode_groups) == 2
        first = run_all(engine, [("x", prompt)], SamplingParams(max_tokens=10))
        assert engine.stats().prefix_hit_tokens == 0
        second = run_all(engine, [("y", prompt)], SamplingParams(max_tokens=10))
        hits = engine.stats().prefix_hit_tokens
    finally:
        engine.close()
    prompt_len = len(engine.models["y"].encode(prompt, add_special_tokens=True))
    assert hits == (prompt_len - 1) // 4 * 4 > 0  # every full block of the cached prompt came from x's prefill
    first.events.update(second.events)
    assert_matches_reference(first, artifacts, [prompt], 10)


def test_no_share_baseline_never_mixes_models(sun_artifacts):
    config = EngineConfig(decode_workers=3, share=False)
    engine = Engine.from_artifacts(list(sun_artifacts.values()), config=config)
    try:
        assert len(engine.decode_groups) == 3
        assert all(len(group.workers) == 1 for group in engine.decode_groups.values())
        collector = run_all(engine, [(n, p) for p in PROMPTS for n in sun_artifacts], SamplingParams(max_tokens=12))
        stats = engine.stats()
    finally:
        engine.close()
    assert stats.mixed_model_steps == 0 and stats.max_models_in_step == 1
    assert_matches_reference(collector, sun_artifacts, PROMPTS, 12)


def test_seeded_sampling_is_reproducible_across_batches(sun_artifacts):
    engine = Engine.from_artifacts(list(sun_artifacts.values())[:1], names=["m"])
    try:
        params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
        alone = run_all(engine, [("m", PROMPTS[0])], params).result(("m", PROMPTS[0]))[0]
        crowd = run_all(engine, [("m", p) for p in PROMPTS], params).result(("m", PROMPTS[0]))[0]
        other = run_all(engine, [("m", PROMPTS[0])], replace(params, seed=8)).result(("m", PROMPTS[0]))[0]
    finally:
        engine.close()
    assert alone == crowd and len(alone) == 12
    assert other != alone


class Gate(EngineObserver):
    """Holds the decode worker inside `on_step` while `closed` is clear: an event, not a sleep."""

    def __init__(self):
        self.open = threading.Event()
        self.stepping = threading.Event()

    def on_step(self, batch_size: int, num_models: int) -> None:
        self.stepping.set()
        assert self.open.wait(60)


def test_admission_control_and_abort(sun_artifacts):
    gate = Gate()
    config = EngineConfig(kv_blocks=8, block_size=4, max_queue=1)
    engine = Engine.from_artifacts(list(sun_artifacts.values())[:1], names=["m"], config=config, observer=gate)
    model = engine.models["m"]
    try:
        assert model.max_model_len == 32  # capped by the pool
        with pytest.raises(UnknownModel):
            engine.submit("nope", [1, 2], SamplingParams(), lambda e: None)
        with pytest.raises(RequestTooLong):
            engine.submit("m", list(range(3, 30)), SamplingParams(max_tokens=8), lambda e: None)
        hog = Collector(1)
        big = engine.submit("m", [5] * 25, SamplingParams(max_tokens=7, ignore_eos=True), hog.sink("hog"))
        assert gate.stepping.wait(30)  # the hog holds 7 of 8 blocks and its worker is parked
        waiting = Collector(1)
        queued = engine.submit("m", [6] * 10, SamplingParams(max_tokens=2), waiting.sink("w"))
        with pytest.raises(QueueFull):  # the queued one waits for blocks; the queue holds 1
            engine.submit("m", [7] * 4, SamplingParams(max_tokens=2), lambda e: None)
        engine.abort(queued)
        waiting.wait()
        assert waiting.events["w"][-1].finish_reason == "abort"
        engine.abort(big)
        gate.open.set()
        hog.wait()
        assert hog.events["hog"][-1].finish_reason == "abort"
        stats = engine.stats()
        assert stats.kv_blocks_used == 0 and stats.aborted == 2 and stats.waiting == 0 and stats.running == 0
    finally:
        gate.open.set()
        engine.close()


def test_sun_artifacts_must_share_one_decode_half(tiny_checkpoints, tmp_path):
    a = make_task_artifacts(tiny_checkpoints["llama"], tmp_path / "l", ["a"])[0]
    other = tmp_path / "other"
    split(SplitConfig(model=str(tiny_checkpoints["qwen2"]), out=other))
    with pytest.raises(SuntoolError, match="must share one decode half"):
        Engine.from_artifacts([a, other])


def test_task_half_trained_against_another_decode_is_refused(sun_artifacts, tmp_path):
    target = tmp_path / "stale"
    shutil.copytree(sun_artifacts["math"], target)
    manifest = read_manifest(target)
    stale = replace(manifest.prefill, trained_against="sha256:" + "0" * 64)
    (target / MANIFEST_NAME).write_text(manifest.with_half("prefill", stale).to_json(), encoding="utf-8")
    with pytest.raises(ArtifactError, match="trained against"):
        Engine.from_artifacts([sun_artifacts["code"], target])
    engine = Engine.from_artifacts([target], config=EngineConfig(allow_mismatch=True))
    engine.close()


def test_modes_and_names_are_checked(sun_artifacts, tiny_checkpoints, tmp_path):
    share = tmp_path / "ps"
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=share, mode="prefillshare"))
    with pytest.raises(SuntoolError, match="one mode"):
        Engine.from_artifacts([sun_artifacts["math"], share])
    with pytest.raises(SuntoolError, match="--mode prefillshare"):
        Engine.from_artifacts([sun_artifacts["math"]], config=EngineConfig(mode="prefillshare"))
    with pytest.raises(SuntoolError, match="--name"):
        Engine.from_artifacts([sun_artifacts["math"], sun_artifacts["math"]])
    with pytest.raises(SuntoolError, match="--decode-workers"):
        Engine.from_artifacts([sun_artifacts["math"]], config=EngineConfig(decode_workers=0))


def test_prefill_first_token_convention(tiny_checkpoints, tmp_path):
    paths = []
    for name in ("p", "q"):
        split(SplitConfig(model=str(tiny_checkpoints["qwen2"]), out=tmp_path / name, first_token="prefill"))
        paths.append(tmp_path / name)
    artifacts = dict(zip(["p", "q"], paths, strict=True))
    engine = Engine.from_artifacts(paths, config=EngineConfig(block_size=4, kv_blocks=24))
    try:
        assert {g.first_token for g in engine.prefill_groups.values()} == {"prefill"}
        collector = run_all(engine, [(n, p) for p in PROMPTS for n in artifacts], SamplingParams(max_tokens=14))
        stats = engine.stats()
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 14)  # also through preemption and recompute
    assert stats.preemptions > 0 and stats.kv_blocks_used == 0


def test_recompute_right_after_the_prefill_token(tiny_checkpoints, tmp_path):
    """Prefill convention: preempted after its first token (made by the prefill half), nothing to catch up."""
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=tmp_path / "p", first_token="prefill"))
    engine = Engine.from_artifacts([tmp_path / "p"], names=["p"], config=EngineConfig(block_size=4))
    try:
        model = engine.models["p"]
        prompt = model.encode(PROMPTS[0], add_special_tokens=True)
        fresh = Collector(1)
        engine.submit("p", prompt, SamplingParams(max_tokens=6), fresh.sink("fresh"))
        fresh.wait()
        expected = fresh.result("fresh")[0]
        from suntool.serve.sequence import Sequence

        seq = Sequence(model=model, prompt_ids=prompt, params=SamplingParams(max_tokens=6), sink=lambda e: None)
        seq.output_ids = expected[:1]  # as if preempted right after the prefill half's token
        worker = model.prefill.worker
        assert worker._reserve(seq, wait=False)
        worker._run_paged(seq)
        assert seq.num_cached == len(prompt) == seq.length - 1
        engine.allocator.free(seq.block_table)
    finally:
        engine.close()
