"""The kernels path (`suntool.kernel_path`): generate through the kernel dispatchers equals HF `generate`."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

import suntool.kernels.paged_attention as paged_module
import suntool.kernels.rmsnorm as rmsnorm_module
import suntool.kernels.rotary as rotary_module
import suntool.kernels.w4a16 as w4a16_module
from suntool import kernel_path
from suntool.errors import SuntoolError
from suntool.handoff import SamplingConfig, prefill_decode
from suntool.kernel_path import disable_kernels, enable_kernels, kernels_enabled
from tests.kernel_conftest_helpers import use_interpreter
from tests.test_handoff import MAX_NEW, assert_matches, padded_batch, reference
from tests.tiny_models import ARCHITECTURES, EOS_ID, PAD_ID, build_model

SLIDING = {"mistral", "gemma2", "gemma3_text"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread. On a busy 2-core machine two threads make every tiny op wait for a
    descheduled peer (a decode of 14 tokens goes from 10 ms to 3 s); results are the same either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spies(monkeypatch):
    """Count the calls that reach each kernel dispatcher (and keep paged attention's arguments)."""
    calls: Counter = Counter()
    paged_calls: list[tuple[tuple, dict]] = []

    def spy(module, name, record=None):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            if record is not None:
                record.append((args, kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(rmsnorm_module, "rmsnorm")
    spy(rotary_module, "apply_rotary")
    spy(paged_module, "paged_attention", paged_calls)
    spy(w4a16_module, "w4a16_matmul")
    calls.paged_calls = paged_calls
    return calls


def run(model, ids, mask, max_new=MAX_NEW):
    config = SamplingConfig(max_new_tokens=max_new, output_logits=True, eos_token_ids=(EOS_ID,))
    return prefill_decode(model, model, ids, mask, config, pad_token_id=PAD_ID)


def decode_forwards(result) -> int:
    """Forwards of one token per row that `decode` ran (the first one recomputes the last prompt token)."""
    return len(result.logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kernels_path_equals_generate(arch, spies):
    base, model = build_model(arch), enable_kernels(build_model(arch))
    ids, mask = padded_batch()
    ref_tokens, ref_logits = reference(base, ids, mask)
    spies.clear()
    result = run(model, ids, mask)
    assert max(len(t) for t in result.tokens) > 8  # past the sliding windows of 8
    assert_matches(result, ref_tokens, ref_logits)
    layers = model.config.num_hidden_layers
    assert spies["paged_attention"] == layers * decode_forwards(result)
    assert spies["rmsnorm"] > 0 and spies["apply_rotary"] > 0
    windows = [kw["sliding_window"] for _, kw in spies.paged_calls if kw["sliding_window"] is not None]
    assert windows and all(torch.is_tensor(w) for w in windows)  # left padding read as per-row windows
    # keys the longest row attends at the last step: > 8 in full layers, <= 8 in sliding-window layers
    last_step = spies.paged_calls[-layers:]
    widest = [int(kw["sliding_window"].max()) if kw["sliding_window"] is not None else int(args[1].shape[1])
              for args, kw in last_step]
    assert any(n <= 8 for n in widest) == (arch in SLIDING)
    assert max(widest) > 8 or arch == "mistral"  # Mistral's layers all slide
    softcaps = {kw["softcap"] for _, kw in spies.paged_calls}
    assert softcaps == ({50.0} if arch == "gemma2" else {None})


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_hf_generate_on_an_enabled_model_is_unchanged(arch, spies):
    base, model = build_model(arch), enable_kernels(build_model(arch))
    ids, mask = padded_batch()
    ref_tokens, ref_logits = reference(base, ids, mask)
    tokens, logits = reference(model, ids, mask)
    assert torch.equal(tokens, ref_tokens)
    for ours, theirs in zip(logits, ref_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert spies["paged_attention"] > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_ref_and_auto_backends_agree_on_cpu(arch, monkeypatch):
    model = enable_kernels(build_model(arch))
    ids, mask = padded_batch()
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    forced = run(model, ids, mask)
    monkeypatch.setenv("SUNTOOL_KERNELS", "auto")
    auto = run(model, ids, mask)
    assert forced.tokens == auto.tokens
    for a, b in zip(forced.logits, auto.logits, strict=True):
        assert torch.equal(a, b)


@pytest.mark.triton
def test_triton_interpreter_runs_the_decode_path(monkeypatch):
    """llama through the interpreted Triton kernels (RMSNorm, rotary, paged attention) still equals generate."""
    launches: Counter = Counter()
    for module in (rmsnorm_module, paged_module):
        real = module._launch
        monkeypatch.setattr(module, "_launch", lambda *a, _real=real, _name=module.__name__, **k: (
            launches.update([_name]), _real(*a, **k))[1])
    real_rotate = rotary_module._rotate_one
    monkeypatch.setattr(rotary_module, "_rotate_one", lambda *a: (launches.update(["rotary"]), real_rotate(*a))[1])
    base, model = build_model("llama"), enable_kernels(build_model("llama"))
    ids, mask = padded_batch()
    new = 6
    ref_tokens, ref_logits = reference(base, ids, mask)
    use_interpreter(monkeypatch)
    monkeypatch.setenv("SUNTOOL_KERNELS", "triton")
    result = run(model, ids, mask, max_new=new)
    assert launches[paged_module.__name__] == model.config.num_hidden_layers * decode_forwards(result)
    assert launches[rmsnorm_module.__name__] > 0 and launches["rotary"] > 0
    for row, tokens in enumerate(result.tokens):
        assert tokens == ref_tokens[row, : len(tokens)].tolist()
    for step, ours in enumerate(result.logits):
        active = torch.tensor([len(t) > step for t in result.tokens])
        torch.testing.assert_close(ours[active], ref_logits[step][active].float(), atol=1e-4, rtol=1e-4)


def rtn_llama():
    from suntool.quant.quantize_model import quantize_model

    model = build_model("llama")
    quantize_model(model, [], bits=4, group_size=32, method="rtn")
    return model.eval()


def test_quantized_model_through_w4a16_equals_quantlinear(spies):
    from suntool.quant.qlinear import QuantLinear, quantized_linear_names

    plain = rtn_llama()
    model = enable_kernels(copy.deepcopy(plain))
    n_quant = len(quantized_linear_names(model))
    assert n_quant == 7 * model.config.num_hidden_layers
    ids, mask = padded_batch()
    expected = run(plain, ids, mask)
    assert spies["w4a16_matmul"] == 0  # the unmodified quantized model runs QuantLinear's own path
    result = run(model, ids, mask)
    assert spies["w4a16_matmul"] == n_quant * (1 + decode_forwards(result))  # prefill + every decode step
    assert result.tokens == expected.tokens
    for ours, theirs in zip(result.logits, expected.logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    disable_kernels(model)
    assert all("forward" not in m.__dict__ for m in model.modules() if isinstance(m, QuantLinear))


def test_w4a16_and_quant_packing_share_one_convention():
    """suntool.quant.packing (what checkpoints hold) and kernels/w4a16 (what the kernel reads) agree exactly."""
    from suntool.quant import packing

    gen = torch.Generator().manual_seed(0)
    n_in, n_out, group = 64, 24, 16
    codes = torch.randint(0, 16, (n_out, n_in), generator=gen, dtype=torch.int32)
    zeros = torch.randint(0, 16, (n_in // group, n_out), generator=gen, dtype=torch.int32)
    zeros[0, :3] = torch.tensor([0, 15, 1])  # 0 borrows across nibbles in the v1 words
    scales = torch.rand(n_in // group, n_out, generator=gen) * 0.1 + 0.01
    g_idx = (torch.randperm(n_in, generator=gen) // group).to(torch.int32)  # act-order grouping
    packed = packing.pack(codes, zeros, scales, g_idx, bits=4)
    assert torch.equal(packed.qweight, w4a16_module.pack_int4(codes.t()))
    assert torch.equal(packed.qzeros, w4a16_module.pack_zeros(zeros))
    assert torch.equal(w4a16_module.unpack_zeros_ref(packed.qzeros), zeros)
    dequantized = packing.dequantize(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, bits=4)
    assert torch.equal(w4a16_module.dequantize_ref(packed.qweight, packed.qzeros, packed.scales, packed.g_idx),
                       dequantized.t())
    x = torch.randn(5, n_in, generator=gen)
    torch.testing.assert_close(
        w4a16_module.w4a16_matmul(x, packed.qweight, packed.qzeros, packed.scales, packed.g_idx),
        x @ dequantized.t(), atol=1e-5, rtol=1e-5,
    )


def test_enable_is_idempotent_disable_restores_and_other_models_are_untouched(spies):
    def count_hooks(module) -> int:
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())

    model, other = build_model("qwen3"), build_model("qwen3")
    ids, mask = padded_batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    plain_hooks = count_hooks(model)
    enable_kernels(model)
    hooks = count_hooks(model)
    assert hooks == plain_hooks + 2 * model.config.num_hidden_layers
    assert enable_kernels(model) is model and kernels_enabled(model)
    assert count_hooks(model) == hooks
    assert model.config._attn_implementation == kernel_path.ATTENTION_NAMES["sdpa"]
    with torch.no_grad():
        other(input_ids=ids, attention_mask=mask)  # same architecture, never enabled: plain transformers
        assert spies["rmsnorm"] == spies["apply_rotary"] == 0
        enabled = model(input_ids=ids, attention_mask=mask).logits
        assert spies["rmsnorm"] > 0 and spies["apply_rotary"] > 0
        spies.clear()
        disable_kernels(model)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert not kernels_enabled(model) and model.config._attn_implementation == "sdpa"
    assert count_hooks(model) == plain_hooks
    assert sum(spies.values()) == 0
    assert torch.equal(after, before)
    torch.testing.assert_close(enabled, before, atol=1e-5, rtol=0)


def test_unsupported_models_are_refused():
    import transformers

    from suntool.affine_attention import convert_to_affine

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(SuntoolError, match="supports llama"):
        enable_kernels(gpt2)
    affine = convert_to_affine(build_model("llama"))
    with pytest.raises(SuntoolError, match="'sdpa' or 'eager'"):
        enable_kernels(affine)
    assert not kernels_enabled(affine)
    for model in (gpt2, affine):  # what a loader that serves any checkpoint calls
        assert enable_kernels(model, strict=False) is model and not kernels_enabled(model)
    assert affine.config._attn_implementation == "suntool_affine"
    assert all("forward" not in m.__dict__ for m in affine.modules())


class _Attention(torch.nn.Module):
    """Just what the attention functions read from a transformers attention module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.head_dim = 16


def _attention_case(visible: torch.Tensor, float_mask: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, length = visible.shape
    query = torch.randn(b, 4, 1, 16, generator=gen)
    key, value = torch.randn(b, 2, length, 16, generator=gen), torch.randn(b, 2, length, 16, generator=gen)
    mask = visible[:, None, None, :]
    if float_mask:
        mask = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    return _Attention(2).eval(), query, key, value, mask


@pytest.mark.parametrize("layout", ["suffix", "holes", "none"])
def test_decode_attention_reads_any_mask_exactly(layout, monkeypatch):
    """Left padding / windows (suffix), arbitrary holes (token-granular view), no mask: equal to HF's own."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    length = 12
    visible = torch.ones(3, length, dtype=torch.bool)
    if layout == "suffix":
        visible[0, :5] = visible[1, :11] = False
    elif layout == "holes":
        visible[0, 2:6] = visible[1, ::2] = visible[2, 0] = False
        visible[:, -1] = True
    module, query, key, value, mask = _attention_case(visible, float_mask=False)
    mask = None if layout == "none" else mask
    calls = []
    real = paged_module.paged_attention
    monkeypatch.setattr(paged_module, "paged_attention", lambda *a, **k: calls.append(a) or real(*a, **k))
    ours, _ = kernel_path.kernel_attention_sdpa(module, query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    block_size = calls[-1][1].shape[1]
    assert block_size == (1 if layout == "holes" else length)  # token-granular view only for holes
    module, query, key, value, float_mask = _attention_case(visible, float_mask=True, seed=1)
    float_mask = None if layout == "none" else float_mask
    ours, _ = kernel_path.kernel_attention_eager(module, query, key, value, float_mask, scaling=0.3, softcap=2.0)
    theirs, _ = eager_attention_forward(module, query, key, value, float_mask, scaling=0.3, softcap=2.0)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert len(calls) == 2


def test_prefill_and_training_use_the_original_attention(monkeypatch):
    calls = []
    monkeypatch.setattr(paged_module, "paged_attention", lambda *a, **k: calls.append(a))
    module, query, key, value, mask = _attention_case(torch.ones(2, 5, dtype=torch.bool), float_mask=False)
    prefill_query = torch.randn(2, 4, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    kernel_path.kernel_attention_sdpa(module, prefill_query, key, value, causal, scaling=0.25)
    module.train()
    kernel_path.kernel_attention_sdpa(module, query, key, value, mask, scaling=0.25)
    assert calls == []


def test_generate_texts_over_an_artifact_with_kernels(tiny_checkpoints, tmp_path, spies):
    """The `suntool generate` path: load_artifact enables kernels on both halves; same text as without."""
    from suntool.artifact import load_artifact
    from suntool.generation import generate_texts
    from suntool.split import SplitConfig, split

    prompts = ["Paris is the capital", "def add(a, b):", "Question: what is 12 plus 30? Answer:"]
    split(SplitConfig(model=str(tiny_checkpoints["gemma2"]), out=tmp_path / "art"))
    config = SamplingConfig(max_new_tokens=12)
    expected = generate_texts(load_artifact(tmp_path / "art", kernels=False), prompts, config)
    assert spies["paged_attention"] == 0
    loaded = load_artifact(tmp_path / "art")  # kernels on by default
    assert kernels_enabled(loaded.decode_model)
    assert [r.tokens for r in generate_texts(loaded, prompts, config)] == [r.tokens for r in expected]
    assert spies["paged_attention"] > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_serving_engine_with_kernels_equals_generate(arch, tiny_checkpoints, tmp_path, spies):
    """The serving engine's transformers path (left-padded gathers of paged blocks) through the kernels path
    (`compact=False`: Llama would otherwise run the engine's own forward, tests/test_serve_runner.py)."""
    from suntool.serve.engine import Engine, EngineConfig
    from suntool.serve.models import load_plan, plan_models
    from suntool.serve.sequence import SamplingParams
    from tests.test_serve_engine import PROMPTS, assert_matches_reference, make_task_artifacts, run_all

    artifacts = dict(zip(["a", "b"], make_task_artifacts(tiny_checkpoints[arch], tmp_path, ["a", "b"]), strict=True))
    loaded = load_plan(plan_models([str(p) for p in artifacts.values()]), dtype="float32")
    for model in loaded.weights.values():
        enable_kernels(model)
    engine = Engine(loaded, EngineConfig(block_size=4, kv_blocks=64, compact=False))
    try:
        collector = run_all(engine, [(n, p) for p in PROMPTS for n in artifacts], SamplingParams(max_tokens=20))
    finally:
        engine.close()
    assert spies["paged_attention"] > 0
    spies.clear()
    assert_matches_reference(collector, artifacts, PROMPTS, 20)  # plain load_artifact + generate_texts
    assert spies["paged_attention"] == 0
