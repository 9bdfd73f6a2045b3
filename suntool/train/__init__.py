"""suntool.train: fine-tuning the task half of a split artifact (`suntool finetune`).

Public API:

    from suntool.train import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(artifact="art", data="train.jsonl", out="art-tuned", method="sun"))

Modules: `config` (FinetuneConfig, YAML + overrides), `data` (JSONL validation,
tokenization, batches), `methods` (SUN / PrefillShare / full, the shared completion
loss, LoRA, DDP), `loop` (the training loop, checkpoints, resume), `dropbp` (DropBP),
`export` (the trained artifact), `distributed` (torchrun), `finetune` (one whole run).
Nothing here imports torch at import time.
"""

from suntool.train.config import FinetuneConfig
from suntool.train.finetune import FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
