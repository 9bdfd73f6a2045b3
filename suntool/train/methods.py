"""The three training methods and the one loss they share: CE on completion tokens.

`build_method(config, ref, dist)` loads the halves of an artifact for `--method` and
returns a `MethodSetup` whose `loss_sum(batch)` is the summed cross-entropy over the
batch's completion tokens (and their count):

* `sun` — the prefill half is trained, the shared decode half is frozen
  (`requires_grad=False`, eval mode). With the default `first_token="decode"` handoff the
  prefill half runs over `prompt[:-1]` with grad and hands its per-layer K/V to the decode
  half, which runs teacher-forced over `[last prompt token, completion[:-1]]` reading
  that cache; the loss is on the decode half's logits, so gradients reach the prefill
  half only through the K/V of every layer. With `first_token="prefill"` the prefill half
  runs over the whole prompt and its own logits at the last prompt token predict the
  first completion token (that term also trains it directly); the decode half predicts
  the rest from `completion[:-1]`.
* `prefillshare` — the prefill half is frozen and its prompt K/V are computed under
  `no_grad` (they depend only on the prompt, so a caller may cache them); the decode half
  is trained on the same teacher-forced completion.
* `full` — the conventional baseline: one model (the shared half of a split artifact,
  i.e. the base, or the model itself for a monolithic one) over `prompt + completion[:-1]`
  in one forward.

Positions and masks are built as the handoff builds them (left-padded prompts,
right-padded completions, position = running count of real tokens), so with the same
weights in both halves the split loss equals the monolithic loss (tested on every
supported architecture).

The trained part is wrapped in DDP (`find_unused_parameters=True`: SUN never reaches the
prefill half's LM head, DropBP detaches whole branches) when launched with several
processes. `--lora R` wraps the trained half in a PEFT LoRA model (all linear layers but
the LM head). `--gradient-checkpointing` checkpoints each transformer layer for `full`
(transformers' own); for the split methods, whose layers write a KV cache that a layer-level
recompute would write twice, it checkpoints each half as a whole (one recompute per half
in backward, only the K/V and logits kept).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    import torch

    from suntool.artifact import ArtifactRef
    from suntool.train.config import FinetuneConfig
    from suntool.train.data import Batch
    from suntool.train.distributed import DistInfo
    from suntool.train.dropbp import DropBP

IGNORE = -100


def kv_tensors(cache) -> list[torch.Tensor]:
    """The cache's per-layer (keys, values) as a flat list [k0, v0, k1, v1, ...]."""
    flat = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


def cache_from_kv(model, flat: tuple[torch.Tensor, ...], seq_len: int):
    """A fresh cache for `model` holding the K/V tensors `flat` (as `kv_tensors` returns them).

    `seq_len` is how many tokens produced them (sliding-window layers keep only the last
    window - 1 but must know where they are). Rebuilding from tensors keeps their autograd history.
    """
    from suntool.handoff import new_cache

    cache = new_cache(model)
    if len(flat) != 2 * len(cache.layers):
        raise ValueError(f"expected K/V for {len(cache.layers)} layers, got {len(flat) // 2}")
    for index, layer in enumerate(cache.layers):
        keys, values = flat[2 * index], flat[2 * index + 1]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = seq_len
    return cache


def _make_parts():
    """The nn.Module wrappers (defined lazily so importing this module does not import torch)."""
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from suntool.handoff import forward_with_cache, new_cache, position_ids_from_mask

    class PromptKV(nn.Module):
        """Run a model over prompt tokens; return its per-layer K/V (and, if asked, the last logits)."""

        def __init__(self, model, *, with_logits: bool, checkpointing: bool, dropbp: DropBP | None = None):
            super().__init__()
            self.model, self.with_logits, self.checkpointing, self.dropbp = model, with_logits, checkpointing, dropbp

        def forward(self, input_ids, attention_mask):
            if self.checkpointing and torch.is_grad_enabled():
                return checkpoint(self._run, input_ids, attention_mask, use_reentrant=False)
            return self._run(input_ids, attention_mask)

        def _run(self, input_ids, attention_mask):
            cache = new_cache(self.model)
            logits = forward_with_cache(self.model, input_ids, attention_mask, cache, logits_to_keep=1)
            flat = kv_tensors(cache)
            if self.dropbp is not None:  # a dropped attention branch hands back K/V without history
                flat = [t.detach() if self.dropbp.attention_dropped(i // 2) else t for i, t in enumerate(flat)]
            return (*flat, logits[:, -1, :]) if self.with_logits else tuple(flat)

    class CompletionLogits(nn.Module):
        """Run a model teacher-forced over completion inputs, reading prompt K/V; return all logits."""

        def __init__(self, model, *, checkpointing: bool):
            super().__init__()
            self.model, self.checkpointing = model, checkpointing

        def forward(self, kv, seq_len: int, input_ids, attention_mask):
            if self.checkpointing and torch.is_grad_enabled():
                return checkpoint(self._run, kv, seq_len, input_ids, attention_mask, use_reentrant=False)
            return self._run(kv, seq_len, input_ids, attention_mask)

        def _run(self, kv, seq_len, input_ids, attention_mask):
            cache = cache_from_kv(self.model, kv, seq_len) if kv else new_cache(self.model)
            return forward_with_cache(self.model, input_ids, attention_mask, cache, logits_to_keep=0)

    class SequenceLogits(nn.Module):
        """One forward over whole sequences (no cache); the logits of the last `keep` positions."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, keep: int):
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                use_cache=False, logits_to_keep=keep,
            )
            return out.logits

    return PromptKV, CompletionLogits, SequenceLogits


@dataclass
class MethodSetup:
    """The models of one run and how to compute its loss."""

    method: str
    first_token: str
    task_half: str  # "prefill" | "decode" | "model" (monolithic)
    trainable: Any  # the trained model (a PeftModel under LoRA)
    frozen: Any | None  # the other half (split methods)
    prompt_part: Any | None = None
    completion_part: Any | None = None
    sequence_part: Any | None = None
    ddp: Any | None = None  # the DDP-wrapped trained part
    dropbp: DropBP | None = None
    lora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.trainable.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in self.trainable.named_parameters() if p.requires_grad]

    def no_sync(self):
        """Skip DDP's gradient all-reduce (for all but the last micro-batch of an accumulation)."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def train_mode(self) -> None:
        self.trainable.train()
        if self.frozen is not None:
            self.frozen.eval()

    def eval_mode(self) -> None:
        self.trainable.eval()

    def _part(self, name: str, raw: bool):
        part = getattr(self, name)
        if not raw and self.ddp is not None and self.ddp.module is part:
            return self.ddp
        return part

    def loss_sum(self, batch: Batch, *, raw: bool = False) -> tuple[torch.Tensor, int]:
        """Summed CE over the completion tokens of `batch`, and their count.

        `raw=True` bypasses the DDP wrapper (evaluation, DropBP calibration).
        """
        import torch
        import torch.nn.functional as F

        prompt, prompt_mask = batch.prompt_ids, batch.prompt_mask
        completion, completion_mask = batch.completion_ids, batch.completion_mask
        targets = completion.masked_fill(completion_mask == 0, IGNORE)
        keep = completion.shape[1]
        if self.method == "full":
            ids = torch.cat([prompt, completion[:, :-1]], dim=1)
            mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1)
            logits = self._part("sequence_part", raw)(ids, mask, keep)
        else:
            prompt_part, completion_part = self._part("prompt_part", raw), self._part("completion_part", raw)
            grad_context = contextlib.nullcontext() if self.method == "sun" else torch.no_grad()
            history = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1)
            if self.first_token == "decode":
                seq_len = prompt.shape[1] - 1
                with grad_context:
                    kv = prompt_part(prompt[:, :-1], prompt_mask[:, :-1]) if seq_len else ()
                inputs = torch.cat([prompt[:, -1:], completion[:, :-1]], dim=1)
                logits = completion_part(kv, seq_len, inputs, history)
            else:
                seq_len = prompt.shape[1]
                with grad_context:
                    *kv, first = prompt_part(prompt, prompt_mask)
                pieces = [first[:, None, :]]
                if keep > 1:
                    pieces.append(completion_part(tuple(kv), seq_len, completion[:, :-1], history))
                logits = torch.cat(pieces, dim=1)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        return loss, int(completion_mask.sum())


def check_method_fits(method: str, ref: ArtifactRef) -> None:
    """Refuse a method the artifact's mode cannot serve, saying how to make one that can."""
    mode = ref.manifest.mode
    needed = {"sun": "sun", "prefillshare": "prefillshare"}.get(method)
    if needed is None or mode == needed:
        return
    trains = {"sun": "the prefill half against a shared decode half",
              "prefillshare": "the decode half against a shared prefill half"}[method]
    source = ref.manifest.base.source if mode != "monolithic" else str(ref.path)
    raise SuntoolError(
        f"{ref.path} is a {mode} artifact, but --method {method} trains {trains}; "
        f"split the model for it first: `suntool split {source} -o ART --mode {needed}` "
        "(or pick --method " + ("prefillshare" if mode == "prefillshare" else "sun" if mode == "sun" else "full") + ")"
    )


def apply_attention(model, variant: str):
    """Swap the trained half's attention for `variant`: "standard" (the model's own) or "affine".

    "affine" converts to Affine-Scaled Attention (suntool.affine_attention), exactly equal to
    the original model at conversion; a half that already is affine is left as it is.
    """
    if variant == "standard":
        return model
    if variant == "affine":
        from suntool.affine_attention import convert_to_affine, is_affine

        return model if is_affine(model.config) else convert_to_affine(model)
    raise SuntoolError(f"attention variant {variant!r} is not available; use --attention standard or affine")


def _load_half(ref: ArtifactRef, name: str, device):
    from suntool.artifact import load_half

    return load_half(ref, name, "float32", str(device))


def _add_lora(model, config: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora, lora_alpha=config.lora_alpha or 2 * config.lora, lora_dropout=config.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_method(config: FinetuneConfig, ref: ArtifactRef, dist: DistInfo) -> MethodSetup:
    """Load the halves for `config.method`, mark what trains, wrap LoRA / DropBP / DDP."""
    import torch

    from suntool.train.dropbp import DropBP

    check_method_fits(config.method, ref)
    manifest = ref.manifest
    first_token = manifest.handoff.first_token
    PromptKV, CompletionLogits, SequenceLogits = _make_parts()
    torch.manual_seed(config.seed)  # LoRA initialisation
    if config.method == "full":
        start = manifest.shared_half or "prefill"
        trainable, frozen, task_half = _load_half(ref, start, dist.device), None, "model"
    else:
        task_half = "prefill" if config.method == "sun" else "decode"
        shared = manifest.shared_half
        trainable = _load_half(ref, task_half, dist.device)
        frozen = _load_half(ref, shared, dist.device)
        frozen.requires_grad_(False)
        frozen.eval()
    trainable = apply_attention(trainable, config.attention)
    trainable.requires_grad_(True)
    if config.lora:
        trainable = _add_lora(trainable, config)
    trainable.train()
    dropbp = DropBP(trainable, config.dropbp, seed=config.seed) if config.dropbp > 0 else None
    setup = MethodSetup(config.method, first_token, task_half, trainable, frozen, dropbp=dropbp, lora=bool(config.lora))
    checkpointing = config.gradient_checkpointing
    if config.method == "full":
        if checkpointing:
            base = trainable.get_base_model() if config.lora else trainable
            enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.x name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        setup.sequence_part = SequenceLogits(trainable)
        trained_part = setup.sequence_part
    elif config.method == "sun":
        setup.prompt_part = PromptKV(trainable, with_logits=first_token == "prefill", checkpointing=checkpointing,
                                     dropbp=dropbp)
        setup.completion_part = CompletionLogits(frozen, checkpointing=checkpointing)
        trained_part = setup.prompt_part
    else:
        setup.prompt_part = PromptKV(frozen, with_logits=first_token == "prefill", checkpointing=False)
        setup.completion_part = CompletionLogits(trainable, checkpointing=checkpointing)
        trained_part = setup.completion_part
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        setup.ddp = DistributedDataParallel(
            trained_part, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False
        )
    setup.train_mode()
    return setup
