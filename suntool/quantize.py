"""`suntool quantize`: QSUN's 4-bit shared decode half, written as a standard GPTQ checkpoint.

`quantize_artifact(QuantizeArtifactConfig(...))` opens an artifact, loads its decode half in
fp32, quantizes the decoder layers' linears (GPTQ with calibration data, or round-to-nearest;
embeddings and lm_head stay in full precision unless `quantize_lm_head`, which quantizes the
lm_head too — untying it from the input embedding where they are tied, the embedding staying in
full precision) with `suntool.quant`, saves the result as a
GPTQ checkpoint (`quantization_config.quant_method = "gptq"`, v1 packing) plus the tokenizer,
stores it under its own fingerprint and links it into the artifact in place of the old
decode half. The artifact is rewritten atomically (in place, or into `out`); the task half
is untouched and keeps its `trained_against` record, so a prefill half trained against the
full-precision decode half is refused with the quantized one until it is retrained (QSUN
recovery: `suntool finetune --method sun`) or run with `--allow-mismatch`.

Calibration: `calib="builtin"` draws prompt+completion texts from the bundled synthetic
tasks' training data; a path is read like fine-tuning data (JSONL prompt/completion or chat
messages). Too little data is an error that states the minimum.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from suntool.errors import SuntoolError

Progress = Callable[[str], None]
MIN_CALIB_SAMPLES = 4
MIN_CALIB_TOKENS = 256
BUILTIN_CALIB_TASKS = ("arith", "program", "funcall")


@dataclass(frozen=True)
class QuantizeArtifactConfig:
    artifact: Path
    out: Path | None = None  # None: rewrite the artifact in place (atomically)
    bits: int = 4
    group_size: int | None = None  # None: 128, or the largest of 64/32/16 dividing every layer width
    method: str = "gptq"
    desc_act: bool = False
    calib: str = "builtin"  # "builtin" or a JSONL path
    calib_samples: int = 64
    calib_seq_len: int = 256
    force: bool = False  # allow quantizing a task half
    seed: int = 0
    quantize_lm_head: bool = False  # the lm_head too (untied from the embedding in the decode half if tied)

    def validate(self) -> None:
        from suntool.quant.packing import check_bits

        check_bits(self.bits)
        if self.method not in ("gptq", "rtn"):
            raise SuntoolError(f"--method must be gptq or rtn, got {self.method!r}")
        if self.group_size is not None and self.group_size != -1 and self.group_size <= 0:
            raise SuntoolError(f"--group-size must be positive (or -1 for one group per row), got {self.group_size}")
        if self.calib_samples < MIN_CALIB_SAMPLES:
            raise SuntoolError(f"--calib-samples must be at least {MIN_CALIB_SAMPLES}, got {self.calib_samples}")
        if self.calib_seq_len < 16:
            raise SuntoolError(f"--calib-seq-len must be at least 16, got {self.calib_seq_len}")
        if self.out is not None and Path(self.out).exists():
            raise SuntoolError(f"{self.out} already exists; choose another -o or omit it to rewrite the artifact")


def _calibration_texts(config: QuantizeArtifactConfig, tokenizer) -> list[list[int]]:
    """Token sequences for GPTQ calibration (each cut to calib_seq_len)."""
    import random

    if config.calib == "builtin":
        from suntool.evals.tasks import load_bundled

        records = [record for task in BUILTIN_CALIB_TASKS for record in load_bundled(task, "train")]
        random.Random(config.seed).shuffle(records)
        sequences = [
            tokenizer(record["prompt"] + record["completion"])["input_ids"][: config.calib_seq_len]
            for record in records[: config.calib_samples]
        ]
        source = "the bundled synthetic tasks"
    else:
        from suntool.train.data import load_examples

        path = Path(config.calib)
        if not path.is_file():
            raise SuntoolError(f"--calib {path} does not exist; pass a JSONL file or 'builtin'")
        dataset = load_examples(path, tokenizer, max_length=config.calib_seq_len, truncate=True)
        sequences = [list(ex.prompt_ids + ex.completion_ids) for ex in dataset.examples[: config.calib_samples]]
        source = str(path)
    tokens = sum(len(s) for s in sequences)
    if len(sequences) < MIN_CALIB_SAMPLES or tokens < MIN_CALIB_TOKENS:
        raise SuntoolError(
            f"calibration data from {source} is too small: {len(sequences)} samples / {tokens} tokens; "
            f"GPTQ needs at least {MIN_CALIB_SAMPLES} samples and {MIN_CALIB_TOKENS} tokens"
        )
    return sequences


def auto_group_size(model) -> int:
    """128 (the GPTQ default) if it divides every decoder linear's input width, else 64, 32, 16, or per row."""
    from torch import nn

    from suntool.quant.quantize_model import find_decoder_layers

    _, layers = find_decoder_layers(model)
    widths = {module.in_features for layer in layers for module in layer.modules() if isinstance(module, nn.Linear)}
    for size in (128, 64, 32, 16):
        if all(width % size == 0 for width in widths):
            return size
    return -1


def _cast_full_precision(model, dtype_name: str) -> None:
    """Store what stays unquantized (embeddings, norms, lm_head) in the artifact's own dtype, not fp32."""
    from suntool.checkpoint import torch_dtype
    from suntool.quant.qlinear import QuantLinear

    dtype = torch_dtype(dtype_name)
    if dtype == "auto":
        return
    quantized = {id(p) for module in model.modules() if isinstance(module, QuantLinear) for p in module.parameters()}
    for param in model.parameters():
        if id(param) not in quantized and param.is_floating_point():
            param.data = param.data.to(dtype)
    model.config.dtype = dtype


def _link_or_copy(src, dst) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def quantize_artifact(config: QuantizeArtifactConfig, progress: Progress | None = None,
                      layer_progress: Callable[[int, int, str], None] | None = None):
    """Quantize the artifact's decode half; return (new Manifest, QuantizeReport).

    `progress(message)` gets what is happening; `layer_progress(done, total, name)`, if given, gets
    every quantized linear (and `progress` then no "quantized N/M" messages).
    """
    import torch

    from suntool import store
    from suntool.artifact import open_artifact
    from suntool.atomic import atomic_dir
    from suntool.checkpoint import load_model, load_tokenizer
    from suntool.fingerprint import fingerprint_checkpoint
    from suntool.manifest import MANIFEST_NAME
    from suntool.quant.quantize_model import quantize_model, save_quantized
    from suntool.split import write_config_yaml

    say = progress or (lambda _msg: None)
    config.validate()
    ref = open_artifact(config.artifact, allow_mismatch=True)
    manifest = ref.manifest
    if not (Path(config.artifact) / MANIFEST_NAME).is_file():
        raise SuntoolError(f"{config.artifact} is not a split artifact; run `suntool split` on it first")
    decode = manifest.decode
    if decode.quantization or "quantization_config" in ref.decode_config:
        raise SuntoolError(f"{config.artifact}: the decode half is already quantized ({decode.sha256[:19]}…)")
    if decode.role != "shared" and not config.force:
        raise SuntoolError(
            f"{config.artifact}: the decode half is a task half (mode {manifest.mode}); QSUN quantizes the "
            "shared decode half of a SUN artifact — pass --force to quantize a task half anyway"
        )
    say(f"loading the decode half {decode.sha256[:19]}… in float32")
    model = load_model(ref.decode_dir, dtype="float32")
    tokenizer = load_tokenizer(ref.decode_dir)
    calib = []
    if config.method == "gptq":
        calib = [torch.tensor([seq]) for seq in _calibration_texts(config, tokenizer)]
        say(f"calibrating on {len(calib)} samples, {sum(c.numel() for c in calib)} tokens")

    def on_layer(step: int, total: int, name: str) -> None:
        if layer_progress is not None:
            layer_progress(step, total, name)
        elif step == total or step % 10 == 0:
            say(f"quantized {step}/{total} linears ({name})")

    group_size = config.group_size if config.group_size is not None else auto_group_size(model)
    try:
        report = quantize_model(
            model, calib, bits=config.bits, group_size=group_size, method=config.method,
            desc_act=config.desc_act, progress=on_layer, lm_head=config.quantize_lm_head,
        )
    except SuntoolError as err:
        raise SuntoolError(f"{ref.decode_dir}: {err}") from err
    _cast_full_precision(model, manifest.dtype)
    target = Path(config.out) if config.out is not None else Path(config.artifact)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-quant-", dir=target.parent))
    try:
        half = staging / "half"
        save_quantized(model, half, report, tokenizer=tokenizer)
        fingerprint = fingerprint_checkpoint(half)
        say(f"storing the {config.bits}-bit decode half under {fingerprint[:19]}…")
        stored = store.put(half, fingerprint)
        quantization = dict(model.config.quantization_config)
        new_decode = replace(decode, sha256=fingerprint, quantization=quantization, path="decode")
        new_manifest = manifest.with_half("decode", new_decode)
        with atomic_dir(target, replace=config.out is None) as tmp:
            for item in Path(config.artifact).iterdir():
                if item.name in ("decode", MANIFEST_NAME) or item.name.startswith(f"{target.name}.tmp-"):
                    continue
                if item.name == "prefill" and manifest.prefill.path != "prefill":
                    continue
                if item.is_dir():  # unchanged files: hardlinks, not copies (the old dir goes away after the swap)
                    shutil.copytree(item, tmp / item.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(item, tmp / item.name)
            if not store.link_into(stored, tmp / "decode"):
                new_manifest = new_manifest.with_half("decode", replace(new_decode, path=str(stored.resolve())))
            (tmp / MANIFEST_NAME).write_text(new_manifest.to_json(), encoding="utf-8")
            write_config_yaml(tmp / "quantize.yaml", asdict(config))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return new_manifest, report
