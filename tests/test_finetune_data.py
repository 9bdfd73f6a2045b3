"""Fine-tuning data: validation names file:line of every bad record; tokenization and padding."""

from __future__ import annotations

import json

import pytest

from suntool.train.data import DataError, collate, load_examples
from tests.test_train_support import arith_records, write_jsonl


def test_prompt_completion_records_tokenize_with_eos(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Question: what is 1 plus 2? Answer:", "completion": " 3."}])
    data = load_examples(path, tokenizer, max_length=64)
    (example,) = data.examples
    assert list(example.prompt_ids) == tokenizer("Question: what is 1 plus 2? Answer:")["input_ids"]
    assert list(example.completion_ids) == tokenizer(" 3.", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    assert example.line == 1


def test_chat_records_put_only_the_last_answer_in_the_completion(tokenizer, tmp_path):
    messages = [
        {"role": "user", "content": "what is 2 plus 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3 plus 4?"},
        {"role": "assistant", "content": "7"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    (example,) = load_examples(path, tokenizer, max_length=256).examples
    prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example.prompt_ids) == prompt_text
    assert prompt_text.endswith("<|im_start|>assistant\n") and "4<|im_end|>" in prompt_text  # earlier turn = context
    assert tokenizer.decode(example.completion_ids) == "7<|im_end|>\n"


def test_every_bad_line_is_named(tokenizer, tmp_path):
    lines = [
        json.dumps({"prompt": "ok", "completion": "fine"}),
        "{not json",
        json.dumps({"prompt": "no completion"}),
        json.dumps({"prompt": 3, "completion": "x"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}),
        json.dumps({"prompt": "", "completion": "x"}),
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_examples(path, tokenizer, max_length=64)
    message = str(info.value)
    assert message.startswith(f"{path}: 6 bad records")
    for line, text in [(2, "not valid JSON"), (3, "missing field 'completion'"), (4, "field 'prompt' must be a string"),
                       (5, "must be a JSON object"), (7, "the last message must have role 'assistant'"),
                       (8, "field 'prompt' is empty")]:
        assert f"{path}:{line}: {text}" in message
    assert f"{path}:1:" not in message and f"{path}:6:" not in message


def test_many_bad_lines_are_capped_with_a_count(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["nope"] * 25)
    with pytest.raises(DataError) as info:
        load_examples(path, tokenizer, max_length=64)
    message = str(info.value)
    assert f"{path}:10:" in message and f"{path}:11:" not in message
    assert "and 15 more" in message


def test_empty_and_missing_files(tokenizer, tmp_path):
    with pytest.raises(DataError, match="holds no records"):
        load_examples(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]), tokenizer, max_length=64)
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nowhere.jsonl", tokenizer, max_length=64)


def test_over_long_examples_error_or_truncate(tokenizer, tmp_path):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 10
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "short", "completion": "ok"},
                                                 {"prompt": long_prompt, "completion": " 42."}])
    too_long = r"long\.jsonl:2: example is \d+ tokens, longer than --max-length 16.*--truncate"
    with pytest.raises(DataError, match=too_long):
        load_examples(path, tokenizer, max_length=16)
    data = load_examples(path, tokenizer, max_length=16, truncate=True)
    assert data.truncated == 1
    cut = data.examples[1]
    assert cut.length == 16
    full_prompt = tokenizer(long_prompt)["input_ids"]
    assert list(cut.prompt_ids) == full_prompt[-len(cut.prompt_ids):]  # cut from the left
    assert tokenizer.decode(cut.completion_ids) == " 42.<|im_end|>"  # the answer survives whole


def test_collate_pads_prompts_left_and_completions_right(tokenizer, tmp_path):
    data = load_examples(write_jsonl(tmp_path / "d.jsonl", arith_records(3)), tokenizer, max_length=64)
    examples = [data.examples[0], data.examples[2]]
    batch = collate(examples, pad_id=0)
    for row, example in enumerate(examples):
        n, m = len(example.prompt_ids), len(example.completion_ids)
        assert batch.prompt_ids[row, -n:].tolist() == list(example.prompt_ids)
        assert batch.prompt_mask[row].tolist() == [0] * (batch.prompt_ids.shape[1] - n) + [1] * n
        assert batch.completion_ids[row, :m].tolist() == list(example.completion_ids)
        assert batch.completion_mask[row].tolist() == [1] * m + [0] * (batch.completion_ids.shape[1] - m)
    assert batch.completion_tokens == sum(len(e.completion_ids) for e in examples)
