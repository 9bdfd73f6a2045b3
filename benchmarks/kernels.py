"""Time suntool's kernels against their torch references and against PyTorch's own ops (not a test).

    python benchmarks/kernels.py [--ops rmsnorm,rotary,paged_attention,w4a16,w4a16_cpu,affine_attention]
                                 [--device auto|cpu|cuda] [--dtype float16|bfloat16|float32]
                                 [--repeats N] [--threads N] [--json OUT]

Every number is a median wall time over ``--repeats`` runs after warm-up, and every claim is a ratio
measured in this one run on this one machine (DESIGN.md section 8):
- ``ref/triton``: how much faster the Triton kernel is than its pure-torch reference (GPU only);
- ``<baseline>/<impl>``: against a PyTorch op doing the comparable work: ``F.rms_norm``,
  ``F.scaled_dot_product_attention`` on a dense copy of the paged cache (paged attention; ``ref`` gathers
  shuffled blocks, ``ref_dense_view`` reads that dense cache in place through identity block tables, as
  `suntool.kernel_path` does with transformers' cache) or as plain
  causal attention (affine attention: the price of the affine terms), a dense ``x @ W`` in the
  activation dtype (w4a16: the cost of dequantizing on the fly vs reading a 16-bit weight).
- ``w4a16_cpu`` (CPU only): ``cpu_int4`` (`suntool.kernels.w4a16_cpu`, PyTorch's int4 CPU kernel, what
  `suntool.kernel_path` runs for bf16 activations on the CPU) against the reference, at two decoder
  layer shapes (576x1536, 1536x576, group 128); always bf16 activations, whatever ``--dtype`` says.
On a machine without a GPU only the reference and baseline paths are timed: Triton's CPU interpreter
runs kernels in numpy, one program at a time, and its timings say nothing about the kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

OPS = ("rmsnorm", "rotary", "paged_attention", "w4a16", "w4a16_cpu", "affine_attention")
INTERPRETER_NOTE = (
    "no GPU: Triton kernels not timed (the Triton CPU interpreter's timings are meaningless); "
    "reference and baseline paths only"
)


@dataclass(frozen=True)
class Case:
    """One op at one size: the callables to time, by name ("triton", "ref", or a baseline)."""

    op: str
    size: str
    impls: dict[str, Callable[[], object]]
    baseline: str


@dataclass
class Result:
    op: str
    size: str
    dtype: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def _timer(device: str, repeats: int, warmup: int = 3) -> Callable[[Callable[[], object]], float]:
    import torch

    def cpu_time(fn) -> float:
        for _ in range(warmup):
            fn()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1e3)
        return statistics.median(runs)

    def cuda_time(fn) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end))
        return statistics.median(runs)

    return cuda_time if device == "cuda" else cpu_time


def rmsnorm_cases(device, dtype, gpu):
    import torch
    import torch.nn.functional as F

    from suntool.kernels.rmsnorm import rmsnorm_ref, rmsnorm_triton

    sizes = [(1, 4096), (64, 4096), (4096, 4096)] if gpu else [(1, 2048), (64, 2048), (512, 2048)]
    for rows, hidden in sizes:
        x = torch.randn(rows, hidden, device=device, dtype=dtype)
        w = torch.randn(hidden, device=device, dtype=dtype)
        impls = {
            "ref": lambda x=x, w=w: rmsnorm_ref(x, w, 1e-6),
            "F.rms_norm": lambda x=x, w=w, h=hidden: F.rms_norm(x, (h,), w, 1e-6),
        }
        if gpu:
            impls["triton"] = lambda x=x, w=w: rmsnorm_triton(x, w, 1e-6)
        yield Case("rmsnorm", f"{rows}x{hidden}", impls, "F.rms_norm")


def rotary_cases(device, dtype, gpu):
    import torch

    from suntool.kernels.rotary import apply_rotary_ref, apply_rotary_triton

    sizes = [(1, 1), (8, 1), (1, 2048)] if gpu else [(1, 1), (8, 1), (1, 256)]
    hq, hkv, d = 32, 8, 128
    for b, t in sizes:
        q = torch.randn(b, hq, t, d, device=device, dtype=dtype)
        k = torch.randn(b, hkv, t, d, device=device, dtype=dtype)
        angles = torch.rand(b, t, d // 2, device=device) * 6.28
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        impls = {"ref": lambda q=q, k=k, c=cos, s=sin: apply_rotary_ref(q, k, c, s)}
        if gpu:
            impls["triton"] = lambda q=q, k=k, c=cos, s=sin: apply_rotary_triton(q, k, c, s)
        yield Case("rotary", f"B{b}xT{t}", impls, "ref")


def paged_attention_cases(device, dtype, gpu):
    import torch
    import torch.nn.functional as F

    from suntool.kernels.paged_attention import paged_attention_ref, paged_attention_triton

    hq, hkv, d, block = 32, 8, 128, 16
    sizes = [(1, 512), (16, 1024), (64, 2048)] if gpu else [(1, 256), (8, 512)]
    for b, length in sizes:
        per_seq = -(-length // block)
        num_blocks = b * per_seq
        k_cache = torch.randn(num_blocks, block, hkv, d, device=device, dtype=dtype)
        v_cache = torch.randn(num_blocks, block, hkv, d, device=device, dtype=dtype)
        tables = torch.randperm(num_blocks, device=device).to(torch.int32).view(b, per_seq)
        lens = torch.full((b,), length, dtype=torch.int32, device=device)
        q = torch.randn(b, hq, d, device=device, dtype=dtype)
        # The dense layout SDPA needs: [B, Hkv, L, D], gathered once, outside the timing.
        dense_k = k_cache[tables.long()].reshape(b, -1, hkv, d)[:, :length].transpose(1, 2).contiguous()
        dense_v = v_cache[tables.long()].reshape(b, -1, hkv, d)[:, :length].transpose(1, 2).contiguous()
        args = (q, k_cache, v_cache, tables, lens)
        # The dense cache read in place as B blocks of `length` tokens (what suntool.kernel_path does with
        # transformers' cache): identity block tables, so the reference gathers nothing.
        dense_view = (q, dense_k.transpose(1, 2), dense_v.transpose(1, 2),
                      torch.arange(b, dtype=torch.int32, device=device)[:, None], lens)
        impls = {
            "ref": lambda a=args: paged_attention_ref(*a, validate=False),
            "ref_dense_view": lambda a=dense_view: paged_attention_ref(*a, validate=False),
            "sdpa_dense": lambda q=q, k=dense_k, v=dense_v: F.scaled_dot_product_attention(
                q[:, :, None, :], k, v, enable_gqa=True
            ),
        }
        if gpu:
            impls["triton"] = lambda a=args: paged_attention_triton(*a, validate=False)
        yield Case("paged_attention", f"B{b}xL{length}", impls, "sdpa_dense")


def w4a16_cases(device, dtype, gpu):
    import torch

    from suntool.kernels.w4a16 import (
        default_g_idx,
        dequantize_ref,
        pack_int4,
        pack_zeros,
        w4a16_matmul_ref,
        w4a16_matmul_triton,
    )

    n_in, n_out, group = (4096, 4096, 128) if gpu else (1024, 1024, 128)
    w_int = torch.randint(0, 16, (n_in, n_out), device=device)
    zeros = torch.randint(1, 16, (n_in // group, n_out), device=device)
    packed = (
        pack_int4(w_int),
        pack_zeros(zeros),
        (torch.rand(n_in // group, n_out, device=device) * 0.01).half(),
        default_g_idx(n_in, group, device=device),
    )
    dense = dequantize_ref(*packed).to(dtype)
    for m in (1, 16, 256) if gpu else (1, 16, 64):
        x = torch.randn(m, n_in, device=device, dtype=dtype)
        impls = {
            "ref": lambda x=x: w4a16_matmul_ref(x, *packed),
            "dense_matmul": lambda x=x: x @ dense,
        }
        if gpu:
            impls["triton"] = lambda x=x: w4a16_matmul_triton(x, *packed)
        yield Case("w4a16", f"M{m}x{n_in}x{n_out}", impls, "dense_matmul")


def w4a16_cpu_cases(device, dtype, gpu):
    import torch

    from suntool.kernels.w4a16 import default_g_idx, pack_int4, pack_zeros, w4a16_matmul_ref
    from suntool.kernels.w4a16_cpu import pack_for_cpu, w4a16_matmul_cpu

    if device != "cpu":
        return
    group = 128
    for n_in, n_out in ((576, 1536), (1536, 576)):
        packed = (
            pack_int4(torch.randint(0, 16, (n_in, n_out))),
            pack_zeros(torch.randint(0, 16, (-(-n_in // group), n_out))),
            (torch.rand(-(-n_in // group), n_out) * 0.01).half(),
            default_g_idx(n_in, group),
        )
        pack = pack_for_cpu(*packed)
        if pack is None:
            print(f"w4a16_cpu: this torch has no int4 CPU op for {n_in}x{n_out}; skipped", flush=True)
            return
        for m in (1, 4, 16):
            x = torch.randn(m, n_in, dtype=torch.bfloat16)
            impls = {
                "ref": lambda x=x, p=packed: w4a16_matmul_ref(x, *p),
                "cpu_int4": lambda x=x, p=pack: w4a16_matmul_cpu(x, p),
            }
            yield Case("w4a16_cpu", f"M{m}x{n_in}x{n_out}bf16", impls, "ref")


def affine_attention_cases(device, dtype, gpu):
    import torch
    import torch.nn.functional as F

    from suntool.kernels.affine_attention import affine_attention_ref, affine_attention_triton

    h, hkv, d = 16, 4, 64
    sizes = [(1, 512), (4, 2048)] if gpu else [(1, 128), (1, 512)]
    for b, t in sizes:
        q = torch.randn(b, h, t, d, device=device, dtype=dtype)
        k = torch.randn(b, hkv, t, d, device=device, dtype=dtype)
        v = torch.randn(b, hkv, t, d, device=device, dtype=dtype)
        alpha = torch.rand(b, h, t, device=device)
        alpha_ma = torch.rand(h, device=device)
        args = (q, k, v, alpha, alpha_ma)
        impls = {
            "ref": lambda a=args: affine_attention_ref(*a),
            "sdpa_causal": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=True
            ),
        }
        if gpu:
            impls["triton"] = lambda a=args: affine_attention_triton(*a)
        yield Case("affine_attention", f"B{b}xT{t}", impls, "sdpa_causal")


CASES = {
    "rmsnorm": rmsnorm_cases,
    "rotary": rotary_cases,
    "paged_attention": paged_attention_cases,
    "w4a16": w4a16_cases,
    "w4a16_cpu": w4a16_cpu_cases,
    "affine_attention": affine_attention_cases,
}


def _ratios(timings: dict[str, float], baseline: str) -> dict[str, float]:
    """``a/b`` = how many times faster ``b`` is than ``a`` (> 1: ``b`` wins)."""
    ratios = {}
    if "triton" in timings:
        ratios["ref/triton"] = timings["ref"] / timings["triton"]
        if baseline != "ref":
            ratios[f"{baseline}/triton"] = timings[baseline] / timings["triton"]
    for name in timings:
        if name not in ("triton", baseline):
            ratios[f"{baseline}/{name}"] = timings[baseline] / timings[name]
    return ratios


def run(ops, device: str, dtype_name: str, repeats: int) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    gpu = device == "cuda"
    timer = _timer(device, repeats)
    results = []
    with torch.inference_mode():
        for op in ops:
            for case in CASES[op](device, dtype, gpu):
                result = Result(case.op, case.size, dtype_name)
                for name, fn in case.impls.items():
                    result.timings_ms[name] = timer(fn)
                result.ratios = _ratios(result.timings_ms, case.baseline)
                results.append(result)
                print(_format(result), flush=True)
    info = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "repeats": repeats,
        "triton_timed": gpu,
        "note": None if gpu else INTERPRETER_NOTE,
        "results": [asdict(r) for r in results],
    }
    if gpu:
        import triton

        info["triton"] = triton.__version__
    return info


def _format(result: Result) -> str:
    times = "  ".join(f"{k}={v:.3f}ms" for k, v in result.timings_ms.items())
    ratios = "  ".join(f"{k}={v:.2f}x" for k, v in result.ratios.items()) or "-"
    return f"{result.op:17s} {result.size:18s} {times}  |  {ratios}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                        help="default: float16 on a GPU, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (50 GPU / 5 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from suntool.kernels.dispatch import driver_active

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {', '.join(OPS)}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and driver_active() else "cpu"
    if device == "cuda" and not (torch.cuda.is_available() and driver_active()):
        parser.error("--device cuda: no CUDA GPU with an active Triton driver here")
    dtype = args.dtype or ("float16" if device == "cuda" else "float32")
    repeats = args.repeats or (50 if device == "cuda" else 5)

    if device == "cpu":
        print(f"NOTE: {INTERPRETER_NOTE}", flush=True)
    print("median ms per call; ratio a/b = time(a) / time(b), > 1 means b is faster", flush=True)
    info = run(ops, device, dtype, repeats)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
