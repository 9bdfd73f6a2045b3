"""QSUN measurements: 4-bit decode halves against the full-precision one, in one run.

For a full-precision artifact ART and one or more quantized twins QART... (`suntool quantize ART -o QART`,
e.g. one without and one with `--quantize-lm-head`):
  - held-out perplexity of each decode half on the bundled synthetic test texts,
  - decode-half bytes on disk, in memory as stored (GPTQ parameters + buffers) and as decoding
    (what `load_artifact` holds: on CPU in bf16 the int4 packs replace the GPTQ buffers), with the
    bytes of the lm_head and of the input embedding on their own (a tied pair counted once),
  - decode time per token through `suntool.handoff` (same prompts, same batch, every half timed in
    each of the interleaved repeats, median), as a ratio to the full-precision half.

    python benchmarks/qsun.py runs/demo/task runs/qsun/demo-4bit runs/qsun/demo-4bit-lmhead --json runs/qsun/m.json

Prints a table and writes JSON (`variants`: one entry per quantized artifact; the first one's
figures are also at the top level, as before). On CPU a bf16 4-bit half runs through PyTorch's int4
CPU op (`suntool.kernels.w4a16_cpu`); other dtypes dequantize on the fly in torch (slower than the
full-precision half); on a GPU the Triton w4a16 kernel is the path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def perplexity(model, tokenizer, texts: list[str], max_length: int = 256) -> float:
    import math

    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_length]
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="sum")
            total_nll += float(nll)
            total_tokens += ids.shape[1] - 1
    return math.exp(total_nll / total_tokens)


def memory_bytes(model, prefix: str = "") -> int:
    """Bytes of the parameters and buffers (whose names start with `prefix`)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return sum(t.numel() * t.element_size() for name, t in tensors if name.startswith(prefix))


def cpu_int4_pack_bytes(model) -> int:
    """Bytes of the CPU int4 packs `suntool.kernel_path` holds for a bf16 model on the CPU.

    `load_artifact` builds them at load and frees the GPTQ buffers they replace
    (`keep_only_cpu_int4_packs`); all of them sit in the decoder layers.
    """
    from suntool.kernel_path import _CPU_INT4_ATTR

    total = 0
    for module in model.modules():
        cached = module.__dict__.get(_CPU_INT4_ATTR)
        if cached is not None and cached[1] is not None:
            total += cached[1].weight.nbytes + cached[1].scales_and_zeros.nbytes
    return total


def layers_prefix(model) -> str:
    """The name prefix of the decoder layers (what quantization touches), e.g. 'model.layers.'."""
    names = [name for name, _ in model.named_parameters()]
    return next(name[: name.index(".layers.") + len(".layers.")] for name in names if ".layers." in name)


def disk_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))


def decode_seconds_per_token(prefill_model, decode_model, tokenizer, prompts, new_tokens: int) -> float:
    import torch

    from suntool.generation import encode
    from suntool.handoff import SamplingConfig, decode, prefill

    ids, mask = encode(tokenizer, prompts)
    config = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=())
    with torch.no_grad():
        handoff = prefill(prefill_model, ids, mask)
        handoff.to(dtype=decode_model.dtype)
        start = time.perf_counter()
        decode(decode_model, handoff, config)
        return (time.perf_counter() - start) / new_tokens


def head_and_embedding_bytes(model) -> dict:
    """Bytes of the lm_head (parameters or 4-bit buffers / int4 pack) and of the input embedding; 0 for a tied head."""
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    tied = getattr(head, "weight", None) is not None and head.weight is embedding.weight
    tensors = list(head.parameters()) + list(head.buffers())
    head_bytes = 0 if tied else sum(t.numel() * t.element_size() for t in tensors)
    return {"lm_head_bytes": head_bytes + cpu_int4_pack_bytes(head), "embedding_bytes": embedding.weight.nbytes,
            "tied": tied}


def measure_quantized(path: str, args, full, tokenizer, texts) -> tuple[dict, object]:
    from suntool.artifact import load_artifact

    quant = load_artifact(path, dtype=args.dtype, allow_mismatch=True)
    # the GPTQ tensors as stored (a bf16 CPU load through the kernels keeps only the int4 packs instead)
    stored = load_artifact(path, dtype=args.dtype, allow_mismatch=True, kernels=False)
    result = {
        "quantized_dir": str(quant.ref.decode_dir),
        "quantization": quant.manifest.decode.quantization,
        "perplexity_quantized": perplexity(quant.decode_model, tokenizer, texts),
        "disk_bytes_quantized": disk_bytes(quant.ref.decode_dir),
        "memory_bytes_quantized": memory_bytes(stored.decode_model),
        "memory_bytes_layers_quantized": memory_bytes(stored.decode_model, layers_prefix(stored.decode_model)),
    }
    del stored
    # what decoding really holds: parameters and buffers left after loading, plus the CPU int4 packs
    result["cpu_int4_pack_bytes"] = cpu_int4_pack_bytes(quant.decode_model)
    result["memory_bytes_as_decoding"] = memory_bytes(quant.decode_model) + result["cpu_int4_pack_bytes"]
    layer_packs = sum(cpu_int4_pack_bytes(layer) for layer in quant.decode_model.model.layers)
    result["memory_bytes_layers_as_decoding"] = (
        memory_bytes(quant.decode_model, layers_prefix(quant.decode_model)) + layer_packs)
    result.update({f"as_decoding_{k}": v for k, v in head_and_embedding_bytes(quant.decode_model).items()})
    return result, quant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("full", help="artifact with the full-precision decode half")
    parser.add_argument("quantized", nargs="+", help="the same artifact with its decode half quantized (one or more)")
    parser.add_argument("--texts", type=int, default=100, help="held-out texts for perplexity")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the full-precision half and activations")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from suntool.artifact import load_artifact
    from suntool.commands._ui import quiet_transformers
    from suntool.evals.tasks import load_bundled

    quiet_transformers()
    torch.manual_seed(0)
    full = load_artifact(args.full, dtype=args.dtype)
    tokenizer = full.tokenizer
    texts = [r["prompt"] + r["completion"] for task in ("arith", "program", "funcall")
             for r in load_bundled(task, "test")[: args.texts // 3]]
    prompts = [r["prompt"] for r in load_bundled("arith", "test")[: args.batch]]
    base = {
        "full_dir": str(full.ref.decode_dir),
        "perplexity_full": perplexity(full.decode_model, tokenizer, texts),
        "disk_bytes_full": disk_bytes(full.ref.decode_dir),
        "memory_bytes_full": memory_bytes(full.decode_model),
        # the decoder layers alone: embeddings, final norm and lm_head stay in the model dtype by default
        "memory_bytes_layers_full": memory_bytes(full.decode_model, layers_prefix(full.decode_model)),
        **{f"full_{k}": v for k, v in head_and_embedding_bytes(full.decode_model).items()},
    }
    variants, models = {}, {}
    for path in args.quantized:
        variants[path], models[path] = measure_quantized(path, args, full, tokenizer, texts)
    timings = {"full": [], **{path: [] for path in args.quantized}}
    decoders = {"full": full.decode_model, **{path: m.decode_model for path, m in models.items()}}
    for model in decoders.values():  # warm-up
        decode_seconds_per_token(full.prefill_model, model, tokenizer, prompts, 4)
    for _ in range(args.repeats):  # interleaved so machine noise hits every half alike
        for name, model in decoders.items():
            timings[name].append(decode_seconds_per_token(full.prefill_model, model, tokenizer, prompts,
                                                          args.new_tokens))
    base["decode_s_per_token_full"] = statistics.median(timings["full"])
    for path, result in variants.items():
        result["decode_s_per_token_quantized"] = statistics.median(timings[path])
        result["decode_time_ratio"] = result["decode_s_per_token_quantized"] / base["decode_s_per_token_full"]
        result["memory_ratio_as_decoding"] = result["memory_bytes_as_decoding"] / base["memory_bytes_full"]
        result["memory_ratio_layers_as_decoding"] = (
            result["memory_bytes_layers_as_decoding"] / base["memory_bytes_layers_full"])
        result["disk_ratio"] = result["disk_bytes_quantized"] / base["disk_bytes_full"]
        result["memory_ratio"] = result["memory_bytes_quantized"] / base["memory_bytes_full"]
        result["memory_ratio_layers"] = result["memory_bytes_layers_quantized"] / base["memory_bytes_layers_full"]
    result = {**base, **variants[args.quantized[0]], "variants": variants,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for key, value in base.items():
        print(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    for path, variant in variants.items():
        print(f"-- {path}")
        for key, value in variant.items():
            if not isinstance(value, dict):
                print(f"   {key:37s} {value:.4g}" if isinstance(value, float) else f"   {key:37s} {value}")
    if args.json:
        from suntool.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
