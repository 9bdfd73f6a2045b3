"""Check that transformers + gptqmodel read a suntool GPTQ checkpoint as suntool does.

    python -m suntool.quant.interop_check CKPT [--dtype float16] [--backend torch] [--batch 2] [--seq 16]

Loads CKPT twice — with transformers' own `AutoModelForCausalLM.from_pretrained` (its GPTQ
quantizer, which needs `gptqmodel` and `optimum` installed) and with
`suntool.quant.qlinear.load_quantized` — and compares, on fixed random token ids:

- the dequantized weight of every quantized layer (gptqmodel's `dequantize_weight()` vs
  suntool's `QuantLinear.dequantize()`), which must agree exactly up to the dtype;
- the logits, max |difference|, in the same dtype (gptqmodel's CPU kernel runs in fp16/bf16).

`compare_with_transformers(...)` returns the numbers as a dict; `main()` prints them as JSON and
exits 1 when a weight differs by more than two roundings to the dtype (relative to the layer's
largest weight). This module is a tool, not part of the library API; gptqmodel is imported
only through transformers, only here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def compare_with_transformers(
    ckpt: str | Path,
    dtype: str = "float16",
    batch: int = 2,
    seq: int = 16,
    seed: int = 0,
    backend: str | None = None,
) -> dict[str, Any]:
    """Load `ckpt` with transformers (gptqmodel backend) and with suntool; compare weights and logits.

    `backend` picks gptqmodel's kernel (e.g. "torch"); None lets gptqmodel choose ("auto").
    """
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    from suntool.quant.qlinear import QuantLinear, load_quantized, read_quantization_config

    torch_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {}
    if backend is not None:
        kwargs["quantization_config"] = GPTQConfig.from_dict(
            {**read_quantization_config(Path(ckpt)), "backend": backend}
        )
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(ckpt), dtype=torch_dtype, device_map="cpu", **kwargs
    ).eval()
    ours = load_quantized(ckpt, torch_dtype).eval()
    ours32 = load_quantized(ckpt, torch.float32).eval()

    hf_modules = dict(hf_model.named_modules())
    kernels: set[str] = set()
    max_weight_diff = 0.0
    max_rel_weight_diff = 0.0
    n_layers = 0
    for name, module in ours32.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        theirs = hf_modules.get(name)
        if theirs is None or not hasattr(theirs, "dequantize_weight"):
            raise RuntimeError(f"transformers did not load {name} as a gptqmodel quantized layer")
        kernels.add(type(theirs).__name__)
        their_w = theirs.dequantize_weight().to(torch.float32).t()  # gptqmodel: [in, out]
        our_w = module.dequantize(torch.float32).to(torch_dtype).to(torch.float32)
        diff = float((their_w - our_w).abs().max())
        max_weight_diff = max(max_weight_diff, diff)
        max_rel_weight_diff = max(max_rel_weight_diff, diff / max(float(our_w.abs().max()), 1e-30))
        n_layers += 1

    vocab = hf_model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    with torch.no_grad():
        hf_logits = hf_model(ids).logits.float()
        our_logits = ours(ids).logits.float()
        our32_logits = ours32(ids).logits.float()
    return {
        "checkpoint": str(ckpt),
        "dtype": dtype,
        "backend": backend or "auto",
        "gptqmodel_kernels": sorted(kernels),
        "quantized_layers": n_layers,
        "max_abs_weight_diff": max_weight_diff,
        "max_rel_weight_diff": max_rel_weight_diff,
        "max_abs_logit_diff_same_dtype": float((hf_logits - our_logits).abs().max()),
        "max_abs_logit_diff_vs_suntool_fp32": float((hf_logits - our32_logits).abs().max()),
        "logit_scale_max_abs": float(our32_logits.abs().max()),
        "argmax_agreement": float((hf_logits.argmax(-1) == our_logits.argmax(-1)).float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m suntool.quant.interop_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("ckpt", type=Path, help="a GPTQ checkpoint directory written by suntool")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="gptqmodel kernel, e.g. torch (default: auto)")
    args = parser.parse_args(argv)
    result = compare_with_transformers(args.ckpt, args.dtype, args.batch, args.seq, args.seed, args.backend)
    print(json.dumps(result, indent=2))
    # equal up to the dtype: gptqmodel rounds scales and products to it, suntool computes in fp32
    import torch

    eps = torch.finfo(getattr(torch, args.dtype)).eps
    return 0 if result["max_rel_weight_diff"] <= 2 * eps else 1


if __name__ == "__main__":
    sys.exit(main())
