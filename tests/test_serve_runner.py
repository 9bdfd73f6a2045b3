"""The engine's compact forward (`suntool.serve.runner.CompactLM`): logits equal the transformers forward
for every architecture it covers (prompts longer than the sliding window, packed spans, chunks that read
earlier chunks from the pool, decode steps), the architectures it does not cover fall back, and the
engine's greedy output through it equals `generate` (with long prompts split into chunks too)."""

from __future__ import annotations

import pytest
import torch

from suntool.serve.engine import Engine, EngineConfig
from suntool.serve.kv_blocks import KVPool
from suntool.serve.runner import SUPPORTED, CompactLM, decode_input, extend_input
from suntool.serve.sequence import SamplingParams, Sequence
from tests.test_serve_engine import PROMPTS, assert_matches_reference, make_task_artifacts, run_all
from tests.tiny_models import ARCHITECTURES, build_model

COVERED = [arch for arch in ARCHITECTURES if arch in SUPPORTED]


def new_sequence(ids, pool, first_block):
    seq = Sequence(model=None, prompt_ids=list(ids), params=SamplingParams(), sink=lambda event: None)
    blocks = -(-(len(ids) + 8) // pool.block_size)
    seq.block_table = list(range(first_block, first_block + blocks))
    return seq


@pytest.mark.parametrize("kernel_span_rows", [0, 8, 64], ids=["spans-sdpa", "spans-split", "spans-kernel"])
@pytest.mark.parametrize("arch", COVERED)
def test_logits_equal_the_transformers_forward(arch, kernel_span_rows, monkeypatch):
    """Prompt spans attend through SDPA, through the paged kernel (rows of short spans), or some of each."""
    from suntool.kernels.paged_attention_cpu import cpu_kernel_available
    from suntool.serve import runner as runner_module

    monkeypatch.setattr(runner_module, "KERNEL_SPAN_ROWS", kernel_span_rows)
    model = build_model(arch)
    runner = CompactLM.build(model)
    assert runner is not None
    pool = KVPool(**KVPool.geometry(model.config), num_blocks=40, block_size=4, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (21, 13, 2)]
    seqs = [new_sequence(ids, pool, 2 + 12 * i) for i, ids in enumerate(prompts)]
    with torch.inference_mode():
        reference = [model(torch.tensor([ids]), use_cache=False).logits[0] for ids in prompts]
        # prompts packed, the first one in three chunks (later chunks read the earlier ones from the pool)
        first = runner.forward(pool, extend_input(pool, [(seqs[0], 0, 7)], logits=True))
        packed = extend_input(pool, [(seqs[0], 7, 15), (seqs[1], 0, 12)], logits=True)
        left_to_sdpa = len(runner._paged_rows(pool, packed).spans)
        assert left_to_sdpa == ({0: 2, 8: 1, 64: 0}[kernel_span_rows] if cpu_kernel_available() else 2)
        second = runner.forward(pool, packed)
        third = runner.forward(pool, extend_input(pool, [(seqs[0], 15, 20), (seqs[2], 0, 1)], logits=True))
        for seq, cached in zip(seqs, (20, 12, 1), strict=True):
            seq.num_cached = cached
        step = runner.forward(pool, decode_input(pool, seqs))
    torch.testing.assert_close(first[0], reference[0][6], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, torch.stack([reference[0][14], reference[1][11]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(third, torch.stack([reference[0][19], reference[2][0]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step, torch.stack([r[-1] for r in reference]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", [arch for arch in ARCHITECTURES if arch not in SUPPORTED])
def test_other_architectures_fall_back(arch):
    assert CompactLM.build(build_model(arch)) is None


def test_fused_projections_hold_no_second_copy():
    model = build_model("llama")
    attn = model.model.layers[0].self_attn
    runner = CompactLM.build(model)
    fused = runner.layers[0].qkv.weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


def test_packed_weights_give_the_same_logits_as_plain_matmuls():
    """fp32 on the CPU: every projection runs on oneDNN's prepacked weight (where torch has oneDNN)."""
    from suntool.serve.runner import _onednn_packing_available

    model = build_model("qwen2")  # biases on q/k/v: the packed path adds them too
    packed, plain = CompactLM.build(model), CompactLM.build(model, pack=False)
    if _onednn_packing_available():
        assert all(p.packed is not None for p in packed.projections())
    assert plain.lm_head.packed is None
    assert all(p.packed is None for layer in plain.layers for p in (layer.qkv, layer.down))
    pool_args = dict(**KVPool.geometry(model.config), num_blocks=12, block_size=4, dtype=torch.float32)
    ids = torch.randint(3, 300, (9,), generator=torch.Generator().manual_seed(2)).tolist()
    logits = []
    for runner in (packed, plain):
        pool = KVPool(**pool_args)
        seq = new_sequence(ids, pool, 2)
        with torch.inference_mode():
            prompt = runner.forward(pool, extend_input(pool, [(seq, 0, 8)], logits=True))
            seq.num_cached = 8
            logits.append(torch.cat([prompt, runner.forward(pool, decode_input(pool, [seq]))]))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tied", [False, True], ids=["untied-lm-head", "tied-lm-head"])
def test_released_dense_weights_keep_the_logits_and_stop_the_transformers_modules(tied):
    """One copy of each weight, not two: the packed copy serves, the dense one goes (a tied lm_head stays)."""
    import copy

    from suntool.serve.runner import _onednn_packing_available

    if not _onednn_packing_available():
        pytest.skip("this torch has no oneDNN: nothing is packed, so nothing is held twice")
    model = build_model("qwen2")  # biases: released modules keep them, the packed path adds them
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    reference = copy.deepcopy(model)
    runner = CompactLM.build(model, release=True)
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.numel() == 0 and layer.mlp.down_proj.weight.numel() == 0
    assert runner.layers[0].qkv.weight is None
    assert (model.lm_head.weight.numel() > 0) == tied  # the embedding still reads a tied lm_head
    assert model.model.embed_tokens.weight.numel() > 0
    with pytest.raises(RuntimeError, match="released"):
        model(torch.tensor([[5, 6, 7]]))
    ids = torch.randint(3, 300, (9,), generator=torch.Generator().manual_seed(3)).tolist()
    pool = KVPool(**KVPool.geometry(model.config), num_blocks=12, block_size=4, dtype=torch.float32)
    seq = new_sequence(ids, pool, 2)
    with torch.inference_mode():
        prompt = runner.forward(pool, extend_input(pool, [(seq, 0, 8)], logits=True))
        seq.num_cached = 8
        ours = torch.cat([prompt, runner.forward(pool, decode_input(pool, [seq]))])
        expected = reference(torch.tensor([ids]), use_cache=False).logits[0, -2:]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    released = runner.released_bytes
    assert released > 0 and runner.release_dense_weights() == 0  # twice is harmless
    assert runner.released_bytes == released


def test_a_wrong_forward_is_caught_by_the_self_check(monkeypatch):
    model = build_model("llama")
    monkeypatch.setattr("suntool.serve.runner._rms_norm", lambda x, weight, eps: weight * x)
    assert CompactLM.build(model) is None


@pytest.mark.parametrize("arch", COVERED)
def test_engine_greedy_output_equals_generate(arch, tiny_checkpoints, tmp_path):
    artifacts = dict(zip(["a", "b"], make_task_artifacts(tiny_checkpoints[arch], tmp_path, ["a", "b"]), strict=True))
    # a prefill budget of 8 tokens splits every prompt into chunks
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(max_prefill_tokens=8))
    try:
        assert all(group.runner is not None for group in engine.decode_groups.values())
        assert all(group.runner is not None for group in engine.prefill_groups.values())
        if all(group.runner.lm_head.packed is not None for group in engine.decode_groups.values()):
            decode = next(iter(engine.decode_groups.values())).model  # served from the packed copy alone
            assert decode.model.layers[0].mlp.down_proj.weight.numel() == 0
            assert "GiB of dense copies released" in engine.describe()
        jobs = [(name, prompt) for name in artifacts for prompt in PROMPTS]
        collector = run_all(engine, jobs, SamplingParams(max_tokens=12))
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 12)


def test_engine_reference_path_stays_available(tiny_checkpoints, tmp_path):
    artifacts = dict(zip(["a"], make_task_artifacts(tiny_checkpoints["llama"], tmp_path, ["a"]), strict=True))
    engine = Engine.from_artifacts(list(artifacts.values()), config=EngineConfig(compact=False))
    try:
        assert all(group.runner is None for group in engine.decode_groups.values())
        collector = run_all(engine, [("a", prompt) for prompt in PROMPTS], SamplingParams(max_tokens=8))
    finally:
        engine.close()
    assert_matches_reference(collector, artifacts, PROMPTS, 8)
