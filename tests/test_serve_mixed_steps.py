"""Mixed steps (`EngineConfig.mixed_steps`): where a model's prefill half is its decode half, prompt chunks
run inside the decode forwards (vLLM's chunked prefill). The mixed forward's logits equal separate
forwards; greedy output equals `generate` through chunking, preemption and recompute, prefix-cache hits,
aborts and both first-token conventions; forwards really carry decode rows and prompt chunks together;
SUN halves that differ keep their prefill thread."""

from __future__ import annotations

import threading

import pytest
import torch

from suntool.serve.engine import Engine, EngineConfig
from suntool.serve.kv_blocks import KVPool
from suntool.serve.runner import CompactLM, decode_input, extend_input, mixed_input
from suntool.serve.sequence import SamplingParams
from suntool.split import SplitConfig, split
from tests.test_serve_engine import PROMPTS, Collector, assert_matches_reference, make_task_artifacts, run_all
from tests.test_serve_runner import new_sequence
from tests.tiny_models import build_model


def plain_splits(checkpoint, root, names, **split_args) -> dict:
    """Artifacts whose prefill and decode halves are the same weights (a plain `suntool split`)."""
    out = {}
    for name in names:
        split(SplitConfig(model=str(checkpoint), out=root / name, **split_args))
        out[name] = root / name
    return out


def record_steps(engine: Engine) -> list[tuple[int, int]]:
    """(decode rows, prompt chunks) of every forward the engine's decode runner runs from now on."""
    seen: list[tuple[int, int]] = []
    for group in engine.decode_groups.values():
        forward = group.runner.forward

        def recording(pool, step, forward=forward):
            seen.append((step.decode_rows, len(step.spans)))
            return forward(pool, step)

        group.runner.forward = recording
    return seen


def test_one_mixed_forward_equals_separate_forwards():
    model = build_model("qwen2")
    runner = CompactLM.build(model)
    pool_args = dict(**KVPool.geometry(model.config), num_blocks=40, block_size=4, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (11, 9, 14)]
    results = []
    for mixed in (False, True):
        pool = KVPool(**pool_args)
        decoding, *prefilling = [new_sequence(ids, pool, 2 + 10 * i) for i, ids in enumerate(prompts)]
        spans = [(prefilling[0], 0, 9), (prefilling[1], 0, 6)]  # the second one stops mid-prompt: no logits
        with torch.inference_mode():
            runner.forward(pool, extend_input(pool, [(decoding, 0, 10)], logits=False))
            decoding.num_cached = 10
            if mixed:
                logits = runner.forward(pool, mixed_input(pool, [decoding], spans, [True, False]))
            else:
                logits = torch.cat([runner.forward(pool, decode_input(pool, [decoding])),
                                    runner.forward(pool, extend_input(pool, spans[:1], logits=True)),])
                runner.forward(pool, extend_input(pool, spans[1:], logits=False))
            prefilling[1].num_cached = 6  # the rest of its prompt reads the chunk above from the pool
            rest = runner.forward(pool, mixed_input(pool, [], [(prefilling[1], 6, 14)], [True]))
        results.append(torch.cat([logits, rest]))
    assert results[1].shape == (3, model.config.vocab_size)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        reference = [model(torch.tensor([ids]), use_cache=False).logits[0, -1] for ids in prompts]
    torch.testing.assert_close(results[1], torch.stack(reference), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("first_token", ["decode", "prefill"])
def test_greedy_output_equals_generate_with_prompts_inside_decode_steps(first_token, tiny_checkpoints, tmp_path):
    artifacts = plain_splits(tiny_checkpoints["llama"], tmp_path, ["a", "b"], first_token=first_token)
    # a budget of 8 tokens: every prompt runs in chunks, beside the decode rows of the earlier requests
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(max_prefill_tokens=8))
    try:
        assert all(group.worker.mixed for group in engine.prefill_groups.values())
        assert not any(group.worker.is_alive() for group in engine.prefill_groups.values())
        assert "prompts on the decode threads for 2/2 prefill groups" in engine.describe()
        steps = record_steps(engine)
        jobs = [(name, prompt) for prompt in PROMPTS for name in artifacts]
        collector = run_all(engine, jobs, SamplingParams(max_tokens=12))
        stats = engine.stats()
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 12)
    assert any(rows and chunks for rows, chunks in steps)  # decode rows and prompt chunks in one forward
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0
    assert stats.finished == len(jobs) and stats.generated_tokens == 12 * len(jobs)


def test_preemption_and_prefix_hits_stay_exact(tiny_checkpoints, tmp_path):
    artifacts = plain_splits(tiny_checkpoints["qwen3"], tmp_path, ["q"])
    config = EngineConfig(kv_blocks=14, block_size=4, max_prefill_tokens=12)
    engine = Engine.from_artifacts(list(artifacts.values()), config=config)
    try:
        jobs = [("q", prompt) for prompt in PROMPTS] * 2  # each prompt twice: the second may hit the first's blocks
        collector = Collector(len(jobs))
        for index, (model, prompt) in enumerate(jobs):
            ids = engine.models[model].encode(prompt, add_special_tokens=True)
            engine.submit(model, ids, SamplingParams(max_tokens=20), collector.sink((model, prompt, index)))
        collector.wait()
        again = run_all(engine, [("q", PROMPTS[0])], SamplingParams(max_tokens=20))  # blocks cached by now
        stats = engine.stats()
    finally:
        engine.close()
    assert stats.preemptions > 0 and stats.prefix_hit_tokens > 0
    assert_matches_reference(again, artifacts, PROMPTS[:1], 20)
    for index, (model, prompt) in enumerate(jobs):
        collector.events[(model, prompt)] = collector.events[(model, prompt, index)]
        assert_matches_reference(collector, artifacts, [prompt], 20)
    assert stats.kv_blocks_used == 0 and stats.finished == len(jobs) + 1


def test_abort_of_a_prompt_halfway_through_its_chunks(tiny_checkpoints, tmp_path):
    artifacts = plain_splits(tiny_checkpoints["llama"], tmp_path, ["a"])
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(max_prefill_tokens=2, block_size=4))
    try:
        model = engine.models["a"]
        long_prompt = model.encode(" ".join(PROMPTS * 3), add_special_tokens=True)
        started, events = threading.Event(), []
        forward = engine.decode_groups[model.decode.key].runner.forward

        def slow(pool, step):  # the first chunk is in: abort while the rest waits
            started.set()
            return forward(pool, step)

        engine.decode_groups[model.decode.key].runner.forward = slow
        seq = engine.submit("a", long_prompt, SamplingParams(max_tokens=4), events.append)
        assert started.wait(30)
        engine.abort(seq)
        for _ in range(300):
            if events and events[-1].finish_reason:
                break
            threading.Event().wait(0.05)
        stats = engine.stats()
        follow_up = run_all(engine, [("a", PROMPTS[1])], SamplingParams(max_tokens=6))
    finally:
        engine.close()
    assert events[-1].finish_reason == "abort" and stats.aborted == 1 and stats.kv_blocks_used == 0
    assert_matches_reference(follow_up, artifacts, PROMPTS[1:2], 6)


@pytest.mark.parametrize("first_token", ["decode", "prefill"])
def test_sun_task_halves_run_on_the_decode_thread(first_token, tiny_checkpoints, tmp_path):
    """Task prefill halves that differ from the shared decode half: their chunks run in forwards of their own
    on the decode worker's thread, through chunking, preemption and recompute (catch-up by the decode half)."""
    tuned = make_task_artifacts(tiny_checkpoints["llama"], tmp_path, ["a", "b"])
    if first_token == "prefill":
        from suntool.manifest import MANIFEST_NAME, read_manifest

        for path in tuned:  # the convention only says which half makes the first token: same weights
            manifest = read_manifest(path)
            manifest = type(manifest).from_dict({**manifest.to_dict(), "handoff": {
                **manifest.to_dict()["handoff"], "first_token": "prefill"}})
            (path / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    artifacts = dict(zip(["a", "b"], tuned, strict=True))
    config = EngineConfig(max_prefill_tokens=8, kv_blocks=16, block_size=4)
    engine = Engine.from_artifacts(tuned, config=config)
    try:
        assert all(group.worker.mixed for group in engine.prefill_groups.values())
        assert not any(group.worker.is_alive() for group in engine.prefill_groups.values())
        assert {group.first_token for group in engine.prefill_groups.values()} == {first_token}
        collector = run_all(engine, [(n, p) for p in PROMPTS for n in artifacts], SamplingParams(max_tokens=16))
        stats = engine.stats()
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 16)
    assert stats.preemptions > 0 and stats.kv_blocks_used == 0 and stats.mixed_model_steps > 0


def test_the_switch_and_the_transformers_path_keep_prefill_threads(tiny_checkpoints, tmp_path):
    plain = plain_splits(tiny_checkpoints["llama"], tmp_path, ["p"])
    steps = []
    for config in (EngineConfig(mixed_steps=False), EngineConfig(compact=False)):
        engine = Engine.from_artifacts(list(plain.values()), config=config)
        try:
            assert not any(group.worker.mixed for group in engine.prefill_groups.values())
            assert all(group.worker.is_alive() for group in engine.prefill_groups.values())
            if config.compact:
                steps = record_steps(engine)
            collector = run_all(engine, [("p", prompt) for prompt in PROMPTS], SamplingParams(max_tokens=8))
        finally:
            engine.close()
        assert_matches_reference(collector, plain, PROMPTS, 8)
    # one runner (the same weights), but never decode rows and prompt chunks in one forward
    assert all(rows == 0 or chunks == 0 for rows, chunks in steps) and any(chunks for _, chunks in steps)


@pytest.mark.parametrize("workers", [1, 3])
def test_prefillshare_prompts_reach_their_own_models_decode_worker(workers, tiny_checkpoints, tmp_path):
    """One PrefillShare prefill queue feeds the decode workers of every task model: with a worker per model,
    each takes only the prompts its own model decodes (taking another model's prompt stranded it)."""
    names = ["x", "y", "z"]
    paths = make_task_artifacts(tiny_checkpoints["llama"], tmp_path, names, mode="prefillshare")
    artifacts = dict(zip(names, paths, strict=True))
    engine = Engine.from_artifacts(paths, config=EngineConfig(decode_workers=workers, block_size=4))
    try:
        assert len(engine.prefill_groups) == 1 and len(engine.decode_groups) == 3
        assert all(group.worker.mixed for group in engine.prefill_groups.values())
        collector = Collector(len(PROMPTS) * len(names))
        for prompt in PROMPTS:  # queued in model order, so every worker finds other models' prompts at the head
            for name in names:
                ids = engine.models[name].encode(prompt, add_special_tokens=True)
                engine.submit(name, ids, SamplingParams(max_tokens=10), collector.sink((name, prompt)))
        collector.wait(timeout=120)
        stats = engine.stats()
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 10)
    assert stats.kv_blocks_used == 0


def test_one_context_to_several_models_at_once_is_prefilled_once(tiny_checkpoints, tmp_path):
    """agents:K:parallel: the same long prompt to three PrefillShare models at once, a decode worker each. The
    workers wait for the first one's prompt blocks instead of computing them three times: the other two take
    them from the prefix cache, and every answer still equals `generate`."""
    names = ["x", "y", "z"]
    paths = make_task_artifacts(tiny_checkpoints["llama"], tmp_path, names, mode="prefillshare")
    artifacts = dict(zip(names, paths, strict=True))
    prompt = " ".join(PROMPTS)
    engine = Engine.from_artifacts(paths, config=EngineConfig(decode_workers=3, block_size=4, max_prefill_tokens=16))
    try:
        collector = run_all(engine, [(name, prompt) for name in names], SamplingParams(max_tokens=8))
        stats = engine.stats()
    finally:
        engine.close()
    cacheable = (len(engine.models["x"].encode(prompt, add_special_tokens=True)) - 1) // 4 * 4
    assert stats.prefix_hit_tokens == 2 * cacheable > 0
    assert_matches_reference(collector, artifacts, [prompt], 8)
