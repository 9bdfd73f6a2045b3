"""The lm-eval model `suntool`: equal to lm-eval's own `hf` model, and reachable from `lm_eval`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from suntool.split import SplitConfig, split

LOGLIKELIHOOD = [
    ("Paris is the", " capital"),
    ("Question: what is 12 plus 30? Answer:", " 42."),
    ("The quick", " brown fox jumps over"),
    ("", "hello world"),
    ("0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", " 16"),
]
ROLLING = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n"]
GENERATE = ["Paris is", "Question: what is 12 plus 30?", "0 1 2", '{"name": "get']


def instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, arg, index) for index, arg in enumerate(args)]


@pytest.fixture(scope="module")
def models(tiny_checkpoints, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM

    from suntool.lmeval import SuntoolLM

    checkpoint = tiny_checkpoints["qwen2"]
    root = tmp_path_factory.mktemp("lmeval")
    split(SplitConfig(model=str(checkpoint), out=root / "sun"))
    split(SplitConfig(model=str(checkpoint), out=root / "pre", first_token="prefill"))
    reference = HFLM(pretrained=str(checkpoint), batch_size=2, device="cpu", dtype="float32")
    return (reference, SuntoolLM(artifact=str(root / "sun"), batch_size=2), SuntoolLM(artifact=str(root / "pre")),
            SuntoolLM(artifact=str(root / "sun"), engine=True), SuntoolLM(artifact=str(root / "pre"), engine="true"))


@pytest.mark.parametrize("which", [1, 2], ids=["decode-first-token", "prefill-first-token"])
def test_loglikelihoods_equal_hf(models, which):
    reference, ours = models[0], models[which]
    theirs = reference.loglikelihood(instances("loglikelihood", LOGLIKELIHOOD))
    mine = ours.loglikelihood(instances("loglikelihood", LOGLIKELIHOOD))
    for (a, greedy_a), (b, greedy_b) in zip(mine, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    rolling = [(s,) for s in ROLLING]
    for a, b in zip(
        ours.loglikelihood_rolling(instances("loglikelihood_rolling", rolling)),
        reference.loglikelihood_rolling(instances("loglikelihood_rolling", rolling)),
        strict=True,
    ):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("which", [1, 3, 4], ids=["reference-path", "engine-sun", "engine-prefill-first-token"])
def test_generation_equals_hf(models, which):
    reference, ours = models[0], models[which]
    args = [(prompt, {"until": ["\n", "."], "max_gen_toks": 12, "do_sample": False}) for prompt in GENERATE]
    args.append((GENERATE[0], {"until": "zzz", "max_gen_toks": 20}))  # one stop string, no do_sample: greedy
    theirs = reference.generate_until(instances("generate_until", args))
    progress = []
    ours.on_requests = lambda kind, done, total, tokens: progress.append((kind, done, total))
    try:
        mine = ours.generate_until(instances("generate_until", args))
    finally:
        ours.on_requests = None
    assert mine == theirs
    assert any(len(text) > 3 for text in mine)
    assert progress[-1] == ("generate_until", len(args), len(args))


def test_lm_eval_cli_finds_the_suntool_model(llama_dir, tmp_path):
    """`lm_eval --model suntool` works from the shell after install (entry point + .pth hook)."""
    split(SplitConfig(model=str(llama_dir), out=tmp_path / "art"))
    data = tmp_path / "tasks" / "data.jsonl"
    data.parent.mkdir()
    data.write_text(
        '{"q": "Paris is the capital of", "choices": [" France", " Spain"], "gold": 0}\n'
        '{"q": "0 1 2 3", "choices": [" 4", " x"], "gold": 0}\n'
    )
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    lm_eval = Path(sys.executable).with_name("lm_eval")
    result = subprocess.run(
        [str(lm_eval), "--model", "suntool", "--model_args", f"artifact={tmp_path / 'art'}", "--tasks", "tiny_mc",
         "--include_path", str(tmp_path / "tasks")],
        capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "suntool (" in result.stdout and "|tiny_mc|" in result.stdout.replace(" ", "")
