"""Paged decode attention on the CPU: a small C kernel (OpenMP), same contract as ``paged_attention``.

Contract: ``paged_attention_cpu(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *,
sliding_window=None, softcap=None, num_threads=None)`` -> ``[B, Hq, D]``, exactly the arguments of
`suntool.kernels.paged_attention.paged_attention` (read its docstring: ``q [B, Hq, D]``, caches
``[num_blocks, block_size, Hkv, D]``, ``block_tables [B, max_blocks]``, ``seq_lens [B]`` including the
current token, ``sliding_window`` an int or a ``[B]`` tensor, Gemma-2's ``softcap``), for CPU caches
in float32 or bfloat16 (read as fp32; ``q`` is computed in fp32 and the output comes back in
``q.dtype``). It reads every sequence's keys and values straight from its blocks, once, for all ``G`` query
heads of a KV head together (GQA), and never materialises a gathered copy: the reason it exists. The
reference it is tested against is ``paged_attention_ref`` (a gather, then masked softmax attention);
they agree to fp32 rounding (the kernel sums in a different order).

- ``cpu_kernel_available()`` says whether the kernel can run here: it is compiled once per source and
  CPU (``gcc -O3 -march=native -fopenmp``, ``$CC`` if set) into ``$XDG_CACHE_HOME/suntool/kernels/``
  (atomic rename, so concurrent processes never load half a file), then loaded with ``ctypes``. No
  compiler, a failed build or ``SUNTOOL_CPU_KERNELS=0`` make it False; callers then use the reference.
- One OpenMP thread team per call, ``num_threads`` (default ``torch.get_num_threads()`` of the calling
  thread; one thread when the call has under ~1M multiply-adds). A task is one sequence with all its
  KV heads when there are at least `_WHOLE_ROWS_BATCH` sequences per thread (it then reads whole token
  rows, each block contiguous, the next block prefetched while it works on this one: measured ×1.7
  faster than a task per KV head on an AVX2 CPU, where the cache comes from DRAM, docs/performance.md),
  else one (sequence, KV head). Each task computes its scores in two passes (scores and max, then
  exp-sum and the weighted sum of values) in fp32, 8 lanes at a time (GCC vector extensions).
- Inputs are made contiguous (``q``, tables, lengths) as needed; the caches must be contiguous
  (a pool's per-layer tensor viewed as blocks is). Not differentiable: inference only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("suntool.kernels")

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float load_f32(const float* p, int64_t i) { return p[i]; }
static inline float load_bf16(const uint16_t* p, int64_t i) {
    uint32_t bits = ((uint32_t)p[i]) << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* 8 floats in one SIMD register (GCC vector extensions: AVX on x86, two NEON registers on ARM) */
typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));
static inline v8f vload(const float* p) { v8f r; memcpy(&r, p, sizeof r); return r; }
static inline void vstore(float* p, v8f x) { memcpy(p, &x, sizeof x); }
static inline v8f vload_f32(const float* p, int64_t i) { return vload(p + i); }
static inline v8f vload_bf16(const uint16_t* p, int64_t i) {
    v8u16 half;
    memcpy(&half, p + i, sizeof half);
    v8u32 bits = __builtin_convertvector(half, v8u32) << 16;
    v8f out;
    memcpy(&out, &bits, sizeof out);
    return out;
}
static inline void prefetch_rows(const void* first, int rows, int64_t stride_bytes, int row_bytes) {
    const char* row = (const char*)first;
    for (int r = 0; r < rows; r++, row += stride_bytes)
        for (int byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(row + byte);
}
static inline float vsum(v8f a) { return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])); }

/* Inside a task's walk over positions first..len-1 (`pos`): the rows of this task's KV heads in the block
   holding `pos`, from `pos` to the block's end or `len` (ROW, COUNT of them, `stride` apart); the next
   block's rows are prefetched while this one is read. Used by both passes (keys, then values). */
#define BLOCK_ROWS(CACHE_T, CACHE, ROW, COUNT)                                                                         \
    const int64_t offset = pos % block_size;                                                                           \
    int64_t COUNT = block_size - offset;                                                                               \
    if (COUNT > len - pos) COUNT = len - pos;                                                                          \
    const CACHE_T* ROW = CACHE + (table[pos / block_size] * block_size + offset) * stride + (int64_t)kh0 * dim;        \
    if (pos + COUNT < len)                                                                                             \
        prefetch_rows(CACHE + table[(pos + COUNT) / block_size] * block_size * stride + (int64_t)kh0 * dim,            \
                      block_size, stride * (int64_t)sizeof(CACHE_T), row_bytes)

#define DEFINE_KERNEL(NAME, CACHE_T, LOAD, VLOAD)                                                                      \
void NAME(                                                                                                             \
    const float* q, const CACHE_T* kc, const CACHE_T* vc, const int64_t* tables, const int64_t* lens,                  \
    const int64_t* windows, float* out, int batch, int heads, int kv_heads, int dim, int block_size,                   \
    int max_blocks, float scale, float softcap, int kv_per_task, int nthreads)                                         \
{                                                                                                                      \
    const int group = heads / kv_heads;                                                                                \
    const int parts = (kv_heads + kv_per_task - 1) / kv_per_task;                                                      \
    const int64_t stride = (int64_t)kv_heads * dim; /* elements between one token's row and the next's */              \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")                                             \
    for (int task = 0; task < batch * parts; task++) {                                                                 \
        const int b = task / parts;                                                                                    \
        const int kh0 = (task % parts) * kv_per_task;                                                                  \
        const int kh1 = kh0 + kv_per_task < kv_heads ? kh0 + kv_per_task : kv_heads;                                   \
        const int hq = (kh1 - kh0) * group; /* query heads of this task, contiguous in q and out */                    \
        const int64_t len = lens[b];                                                                                   \
        int64_t first = len - windows[b];                                                                              \
        if (first < 0) first = 0;                                                                                      \
        const int64_t n = len - first;                                                                                 \
        float* scores = (float*)malloc(sizeof(float) * (size_t)(hq * (n > 0 ? n : 1) + 2 * hq));                       \
        float* maxs = scores + (int64_t)hq * (n > 0 ? n : 1);                                                          \
        float* sums = maxs + hq;                                                                                       \
        const float* qb = q + ((int64_t)b * heads + (int64_t)kh0 * group) * dim;                                       \
        float* ob = out + ((int64_t)b * heads + (int64_t)kh0 * group) * dim;                                           \
        const int64_t* table = tables + (int64_t)b * max_blocks;                                                       \
        const int row_bytes = (kh1 - kh0) * dim * (int)sizeof(CACHE_T);                                                \
        for (int h = 0; h < hq; h++) { maxs[h] = -INFINITY; sums[h] = 0.0f; }                                          \
        /* pass 1, scores: block by block (a block's rows are contiguous; the next block is fetched ahead) */          \
        for (int64_t pos = first; pos < len;) {                                                                        \
            BLOCK_ROWS(CACHE_T, kc, k, count);                                                                         \
            for (int64_t i = 0; i < count; i++, k += stride) {                                                         \
                const int64_t t = pos - first + i;                                                                     \
                for (int h = 0; h < hq; h++) {                                                                         \
                    const float* qh = qb + (int64_t)h * dim;                                                           \
                    const CACHE_T* kh = k + (int64_t)(h / group) * dim;                                                \
                    /* two independent accumulator chains, so the FMAs overlap */                                      \
                    v8f even = {0, 0, 0, 0, 0, 0, 0, 0}, odd = {0, 0, 0, 0, 0, 0, 0, 0};                               \
                    int d = 0;                                                                                         \
                    for (; d + 16 <= dim; d += 16) {                                                                   \
                        even += vload(qh + d) * VLOAD(kh, d);                                                          \
                        odd += vload(qh + d + 8) * VLOAD(kh, d + 8);                                                   \
                    }                                                                                                  \
                    for (; d + 8 <= dim; d += 8) even += vload(qh + d) * VLOAD(kh, d);                                 \
                    float s = vsum(even + odd);                                                                        \
                    for (; d < dim; d++) s += qh[d] * LOAD(kh, d);                                                     \
                    s *= scale;                                                                                        \
                    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);                                              \
                    scores[(int64_t)h * n + t] = s;                                                                    \
                    if (s > maxs[h]) maxs[h] = s;                                                                      \
                }                                                                                                      \
            }                                                                                                          \
            pos += count;                                                                                              \
        }                                                                                                              \
        for (int h = 0; h < hq; h++) {                                                                                 \
            float* oh = ob + (int64_t)h * dim;                                                                         \
            for (int d = 0; d < dim; d++) oh[d] = 0.0f;                                                                \
            float* sh = scores + (int64_t)h * n;                                                                       \
            float total = 0.0f;                                                                                        \
            for (int64_t t = 0; t < n; t++) { sh[t] = expf(sh[t] - maxs[h]); total += sh[t]; }                         \
            sums[h] = total;                                                                                           \
        }                                                                                                              \
        /* pass 2, the weighted sum of values, in the same order */                                                    \
        for (int64_t pos = first; pos < len;) {                                                                        \
            BLOCK_ROWS(CACHE_T, vc, v, count);                                                                         \
            for (int64_t i = 0; i < count; i++, v += stride) {                                                         \
                const int64_t t = pos - first + i;                                                                     \
                for (int h = 0; h < hq; h++) {                                                                         \
                    const float p = scores[(int64_t)h * n + t];                                                        \
                    const CACHE_T* vh = v + (int64_t)(h / group) * dim;                                                \
                    float* oh = ob + (int64_t)h * dim;                                                                 \
                    int d = 0;                                                                                         \
                    for (; d + 8 <= dim; d += 8) vstore(oh + d, vload(oh + d) + p * VLOAD(vh, d));                     \
                    for (; d < dim; d++) oh[d] += p * LOAD(vh, d);                                                     \
                }                                                                                                      \
            }                                                                                                          \
            pos += count;                                                                                              \
        }                                                                                                              \
        for (int h = 0; h < hq; h++) {                                                                                 \
            float* oh = ob + (int64_t)h * dim;                                                                         \
            const float inv = sums[h] > 0.0f ? 1.0f / sums[h] : 0.0f;                                                  \
            for (int d = 0; d < dim; d++) oh[d] *= inv;                                                                \
        }                                                                                                              \
        free(scores);                                                                                                  \
    }                                                                                                                  \
}

DEFINE_KERNEL(paged_decode_attention_f32, float, load_f32, vload_f32)
DEFINE_KERNEL(paged_decode_attention_bf16, uint16_t, load_bf16, vload_bf16)
"""

_MAX_GROUP = 64  # query heads per KV head (a bound kept from the first kernel's stack arrays)
# sequences per thread from which one task takes all KV heads of a sequence (reading whole token rows, one
# contiguous block after another) rather than one KV head (more tasks for small batches)
_WHOLE_ROWS_BATCH = 4
_PARALLEL_WORK = 1 << 20  # multiply-adds (visible tokens x query heads x head dim) below which one thread runs


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "suntool" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source = Path(tmp) / "paged_attention_cpu.c"
        source.write_text(_SOURCE)
        built = Path(tmp) / target.name
        command = [compiler, "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", str(source), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)


@functools.cache
def _library():
    """The compiled kernel (ctypes), or None when it cannot be built here."""
    import ctypes

    if os.environ.get("SUNTOOL_CPU_KERNELS", "1") == "0":
        return None
    digest = hashlib.sha256((_SOURCE + _cpu_signature()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"paged_attention_cpu-{digest}.so"
    try:
        if not target.exists():
            _compile(target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as err:
        log.warning("the CPU paged-attention kernel is unavailable (%s); using the torch reference", err)
        return None
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    functions = {}
    for cache_dtype, name in (("float32", "paged_decode_attention_f32"), ("bfloat16", "paged_decode_attention_bf16")):
        function = getattr(library, name)
        function.argtypes = [pointer] * 7 + [integer] * 6 + [ctypes.c_float, ctypes.c_float, integer, integer]
        function.restype = None
        functions[cache_dtype] = function
    return functions


def cpu_kernel_available() -> bool:
    """True when the compiled kernel loads on this machine (built on first call)."""
    return _library() is not None


def paged_attention_cpu(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                        softcap=None, num_threads=None):
    """Decode attention of ``q`` [B, Hq, D] over paged fp32 caches; see the module docstring."""
    import torch

    functions = _library()
    if functions is None:
        raise RuntimeError("the CPU paged-attention kernel is not available here (see cpu_kernel_available)")
    batch, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    cache_dtype = str(k_cache.dtype).removeprefix("torch.")
    if cache_dtype not in functions or v_cache.dtype != k_cache.dtype or not q.dtype.is_floating_point:
        raise TypeError(f"paged_attention_cpu takes float32 or bfloat16 caches, got {k_cache.dtype}/{v_cache.dtype}")
    function, out_dtype = functions[cache_dtype], q.dtype
    if heads % kv_heads or heads // kv_heads > _MAX_GROUP:
        raise ValueError(f"{heads} query heads over {kv_heads} KV heads is not supported")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the K/V caches must be contiguous")
    q = q.to(torch.float32).contiguous()
    tables = block_tables.to(torch.int64).contiguous()
    lens = seq_lens.to(torch.int64).contiguous()
    if sliding_window is None:
        windows = lens
    elif isinstance(sliding_window, int):
        windows = torch.full_like(lens, sliding_window)
    else:
        windows = sliding_window.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    if batch == 0:
        return out
    threads = int(num_threads or torch.get_num_threads())
    if threads > 1 and int(windows.clamp(max=lens).sum()) * heads * dim < _PARALLEL_WORK:
        threads = 1  # waking a thread team costs more than this much work (far more on a busy machine)
    function(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), lens.data_ptr(),
             windows.data_ptr(), out.data_ptr(), batch, heads, kv_heads, dim, block_size, tables.shape[1],
             float(dim**-0.5 if scale is None else scale), float(softcap or 0.0),
             kv_heads if batch >= _WHOLE_ROWS_BATCH * threads else 1, threads)
    return out.to(out_dtype)
