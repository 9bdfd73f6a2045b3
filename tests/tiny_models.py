"""Tiny random-weight checkpoints of every supported architecture, with a real tokenizer.

`build_tokenizer()` trains a small byte-level BPE tokenizer on a fixed corpus (no
download) and gives it a chat template; `build_checkpoint(arch, dest)` writes a real HF
checkpoint (safetensors + tokenizer) of a 2-layer model of that architecture. Sizes are
chosen to exercise the awkward parts: GQA, sliding windows shorter than the test
sequences, partial rotary (Phi-3), logit soft-capping (Gemma-2).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Question: what is 12 plus 30? Answer: 42.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    "Split the model into a prefill half and a decode half; share the decode half.",
    "Alice has 3 apples and buys 4 more. How many apples does she have? 7.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 384

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text")


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(arch: str):
    import transformers

    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID, tie_word_embeddings=False,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=8)
    if arch == "phi3":
        return transformers.Phi3Config(**common, partial_rotary_factor=0.5)
    if arch == "gemma2":
        return transformers.Gemma2Config(
            **common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16, final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
        )
    if arch == "gemma3_text":
        return transformers.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    raise ValueError(arch)


def build_model(arch: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights so the tiny model's outputs are not all alike
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    return model.eval()


def build_checkpoint(arch: str, dest: Path, seed: int = 0, tokenizer=None) -> Path:
    model = build_model(arch, seed)
    model.save_pretrained(dest)
    (tokenizer or build_tokenizer()).save_pretrained(dest)
    return Path(dest)
