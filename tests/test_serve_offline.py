"""`generate_offline`: every prompt on the serving engine at once gives the texts of the reference path."""

from __future__ import annotations

import pytest

from suntool.split import SplitConfig, split

PROMPTS = ["Paris is", "Question: what is 12 plus 30?", "0 1 2", "def add(a, b):", "The quick brown"]


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline") / "sun"
    split(SplitConfig(model=str(tiny_checkpoints["llama"]), out=out))
    return out


def test_texts_equal_the_reference_path_with_stops(artifact):
    from suntool.artifact import load_artifact
    from suntool.generation import generate_texts
    from suntool.handoff import SamplingConfig
    from suntool.serve.engine import EngineConfig
    from suntool.serve.offline import generate_offline
    from suntool.serve.sequence import SamplingParams

    loaded = load_artifact(artifact, dtype="float32")
    for stops in ((), ("\n", " a")):
        reference = generate_texts(loaded, PROMPTS, SamplingConfig(max_new_tokens=12, stop_strings=stops))
        ids = [loaded.tokenizer(p, add_special_tokens=True)["input_ids"] for p in PROMPTS]
        seen = []
        results = generate_offline(str(artifact), ids, SamplingParams(max_tokens=12, stop=stops),
                                   config=EngineConfig(dtype="float32"),
                                   on_finished=lambda done, total, _r, seen=seen: seen.append((done, total)))
        assert [r.text for r in results] == [g.text for g in reference]
        assert all(r.finish_reason in ("stop", "length") and r.token_ids for r in results)
        assert sorted(seen) == [(i, len(PROMPTS)) for i in range(1, len(PROMPTS) + 1)]
    lengths = generate_offline(str(artifact), ids[:2], [SamplingParams(max_tokens=3, ignore_eos=True),
                                                        SamplingParams(max_tokens=5, ignore_eos=True)],
                               config=EngineConfig(dtype="float32"))
    assert [len(r.token_ids) for r in lengths] == [3, 5]
    with pytest.raises(ValueError, match="2 prompts but 1"):
        generate_offline(str(artifact), ids[:2], [SamplingParams()])
