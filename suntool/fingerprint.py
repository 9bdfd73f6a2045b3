"""Fingerprints of a checkpoint: its tensors and the config that gives them meaning.

A fingerprint is the sha256 over the model config (config.json, minus bookkeeping keys
that do not change the computation: transformers_version, _name_or_path, dtype) and then
every tensor, in name order, with its name, dtype, shape and raw bytes. It does not
depend on how tensors are spread across shard files or on file metadata, and it needs no
torch: the safetensors header is parsed directly. Two halves with the same tensors but a
different config (context length, rope scaling, quantization) get different fingerprints,
so the store never hands one out for the other. A truncated or corrupt file is a
`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import CheckpointError

_CHUNK = 8 << 20
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor lies in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in `file`
    end: int

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def read_safetensors_header(path: Path) -> list[TensorRecord]:
    """Parse and check one safetensors file's header; raise `CheckpointError` if corrupt."""
    path = Path(path)
    size = path.stat().st_size
    hint = f"{path} is truncated or not a safetensors file; re-create it (e.g. re-run the command that wrote it)"
    if size < 8:
        raise CheckpointError(hint)
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len <= 0 or 8 + header_len > size:
            raise CheckpointError(hint)
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(hint) from err
    if not isinstance(header, dict):
        raise CheckpointError(hint)
    base = 8 + header_len
    records = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry; {hint}") from err
        record = TensorRecord(name, dtype, shape, path, base + start, base + end)
        expected = record.numel * _DTYPE_BYTES.get(dtype, 0)
        if record.end > size or (dtype in _DTYPE_BYTES and end - start != expected):
            raise CheckpointError(f"{path}: tensor {name!r} extends past the end of the file; {hint}")
        records.append(record)
    return records


def checkpoint_tensors(directory: Path) -> list[TensorRecord]:
    """All tensors of the `*.safetensors` files in `directory`, sorted by name."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} holds no *.safetensors file; suntool reads safetensors checkpoints only")
    records = [record for file in files for record in read_safetensors_header(file)]
    return sorted(records, key=lambda record: record.name)


_VOLATILE_CONFIG_KEYS = (
    "transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "dtype", "torch_dtype",
)


def canonical_config(directory: Path) -> bytes:
    """config.json as canonical JSON without bookkeeping keys (empty if there is none)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return b""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore or re-save the checkpoint") from err
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def fingerprint_checkpoint(directory: Path) -> str:
    """`sha256:<hex>` of the checkpoint's config and tensors (see module docstring)."""
    digest = hashlib.sha256()
    digest.update(canonical_config(directory))
    for record in checkpoint_tensors(directory):
        digest.update(json.dumps([record.name, record.dtype, list(record.shape)]).encode())
        with record.file.open("rb") as handle:
            handle.seek(record.start)
            remaining = record.end - record.start
            while remaining:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    raise CheckpointError(f"{record.file} is truncated; re-create it")
                digest.update(chunk)
                remaining -= len(chunk)
    return "sha256:" + digest.hexdigest()


GPTQ_METADATA_SUFFIXES = (".qzeros", ".scales", ".g_idx")


def checkpoint_stats(directory: Path) -> tuple[int, int]:
    """(number of parameters, bytes of tensor data) of the checkpoint in `directory`.

    In a GPTQ checkpoint a `qweight` counts as the weights it packs (32/bits per int32) and
    its zeros, scales and g_idx are not parameters, so the count is the original model's.
    """
    records = checkpoint_tensors(directory)
    config_path = Path(directory) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    bits = (config.get("quantization_config") or {}).get("bits")
    parameters = 0
    for record in records:
        if bits and record.name.endswith(".qweight"):
            parameters += record.numel * 32 // bits
        elif not (bits and record.name.endswith(GPTQ_METADATA_SUFFIXES)):
            parameters += record.numel
    return parameters, sum(r.end - r.start for r in records)
