"""DropBP: forward unchanged, dropped branches get no gradient, the FLOPs budget holds."""

from __future__ import annotations

import pytest

from suntool.errors import SuntoolError
from suntool.train.dropbp import DropBP, allocate_rates, find_branches
from tests.test_train_support import one_torch_thread
from tests.tiny_models import ARCHITECTURES, build_model


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def _inputs():
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    return ids, mask


def _loss(model, ids, mask):
    from suntool.handoff import position_ids_from_mask

    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return logits, (logits.float() ** 2).mean()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_is_unchanged_and_dropped_branches_get_no_gradient(arch):
    model = build_model(arch).train()
    ids, mask = _inputs()
    reference, _ = _loss(model, ids, mask)
    dropbp = DropBP(model, 0.5)
    branches = dropbp.branches
    assert [b.name for b in branches] == ["layer0.attention", "layer0.mlp", "layer1.attention", "layer1.mlp"]
    attention0, mlp1 = 0, 3
    dropbp.set_dropped({attention0, mlp1})
    logits, loss = _loss(model, ids, mask)
    assert logits.detach().equal(reference.detach())  # detach changes nothing in the forward
    loss.backward()

    def grad_sum(branch) -> float:
        return sum(0.0 if p.grad is None else float(p.grad.abs().sum()) for p in branch.parameters())

    assert grad_sum(branches[attention0]) == 0 and grad_sum(branches[mlp1]) == 0
    assert grad_sum(branches[1]) > 0 and grad_sum(branches[2]) > 0
    if arch.startswith("gemma"):  # the drop layer sits after Gemma's post-branch norms
        layer = model.model.layers[0]
        assert branches[attention0].end is layer.post_attention_layernorm
        assert layer.post_attention_layernorm.weight.grad is None
    model.zero_grad()
    dropbp.remove()
    _, loss = _loss(model, ids, mask)
    loss.backward()
    assert grad_sum(branches[attention0]) > 0 and grad_sum(branches[mlp1]) > 0


def test_dropped_attention_also_detaches_the_kv_that_sun_trains_through(llama_dir, tmp_path):
    from suntool.artifact import open_artifact
    from suntool.checkpoint import load_tokenizer
    from suntool.train.data import collate, load_examples
    from suntool.train.distributed import setup_distributed
    from suntool.train.methods import build_method
    from tests.test_train_support import arith_records, make_artifact, tiny_config, write_jsonl

    artifact = make_artifact(llama_dir, tmp_path / "sun", "sun")
    data = write_jsonl(tmp_path / "d.jsonl", arith_records(4))
    config = tiny_config(artifact, data, tmp_path / "out", method="sun", dropbp=0.5)
    ref = open_artifact(artifact)
    setup = build_method(config, ref, setup_distributed("cpu"))
    batch = collate(list(load_examples(data, load_tokenizer(ref.prefill_dir), max_length=64).examples), 0)
    setup.dropbp.set_dropped({0})  # layer 0's attention branch
    loss, count = setup.loss_sum(batch)
    (loss / count).backward()
    layer0, layer1 = setup.trainable.model.layers
    assert all(p.grad is None for p in layer0.self_attn.parameters())  # K/V path cut too
    assert layer0.input_layernorm.weight.grad is None
    assert layer1.self_attn.k_proj.weight.grad.abs().sum() > 0
    assert layer0.mlp.down_proj.weight.grad.abs().sum() > 0  # feeds layer 1's K/V


def test_allocate_rates_meets_the_budget_in_tenths():
    flops = [10.0, 30.0, 10.0, 30.0, 10.0, 30.0]
    sensitivities = [5.0, 1.0, 0.1, 0.2, 3.0, 9.0]
    for target in (0.0, 0.25, 0.5, 0.75, 0.9):
        rates = allocate_rates(sensitivities, flops, target)
        assert all(0 <= r <= 0.9 + 1e-9 and abs(r * 10 - round(r * 10)) < 1e-9 for r in rates)
        kept = sum((1 - r) * f for r, f in zip(rates, flops, strict=True)) / sum(flops)
        assert kept <= 1 - target + 1e-9
        assert kept >= 1 - target - 0.1 * max(flops) / sum(flops) - 1e-9  # at most one step below
    rates = allocate_rates(sensitivities, flops, 0.5)
    assert rates[2] >= rates[0] and rates[3] > rates[5]  # insensitive branches drop more
    assert allocate_rates(sensitivities, flops, 0.9) == pytest.approx([0.9] * 6)


def test_realised_kept_flops_match_the_target_over_many_steps(llama_dir):
    from suntool.checkpoint import load_model

    model = load_model(llama_dir, dtype="float32").train()
    ids, mask = _inputs()
    target = 0.5
    dropbp = DropBP(model, target, seed=3)

    def grad_norm_of(dropped) -> float:
        dropbp.set_dropped(dropped)
        _, loss = _loss(model, ids, mask)
        loss.backward()
        norm = sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None) ** 0.5
        model.zero_grad(set_to_none=True)
        return norm

    for phase in ("uniform", "calibrated"):
        if phase == "calibrated":
            rates = dropbp.calibrate(grad_norm_of)
            assert dropbp.calibrated and len(dropbp.sensitivities) == 4 and all(s >= 0 for s in dropbp.sensitivities)
            assert rates != [target] * 4 and max(rates) <= 0.9
        dropbp.kept_flops = dropbp.total_flops = 0.0
        for step in range(4000):
            dropbp.sample(step)
        assert dropbp.realised_kept_fraction == pytest.approx(1 - target, rel=0.05), phase
        assert dropbp.expected_kept_fraction <= 1 - target + 1e-9


def test_sampling_is_a_function_of_seed_and_step():
    a, b = DropBP(build_model("llama"), 0.5, seed=7), DropBP(build_model("llama"), 0.5, seed=7)
    steps = [(s, m) for s in range(20) for m in range(2)]
    assert [a.sample(s, m) for s, m in steps] == [b.sample(s, m) for s, m in steps]
    c = DropBP(build_model("llama"), 0.5, seed=8)
    assert [a.sample(s) for s in range(20)] != [c.sample(s) for s in range(20)]


def test_unknown_layers_are_refused():
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.Linear(2, 2)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer()])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Decoder()

    with pytest.raises(SuntoolError, match="self_attn.*drop --dropbp"):
        find_branches(Model())
    with pytest.raises(SuntoolError, match=r"--dropbp must be in \[0, 0.9\]"):
        DropBP(build_model("llama"), 0.95)
