"""The engine's own forward over the paged KV pool, for Llama-family halves: `CompactLM`.

    runner = CompactLM.build(model)                  # None: not a supported model, use transformers
    logits = runner.forward(pool, decode_input(pool, seqs))                 # one token per sequence
    logits = runner.forward(pool, extend_input(pool, [(seq, start, end)]))  # prompt tokens, packed
    logits = runner.forward(pool, mixed_input(pool, seqs, spans, span_logits))  # both in one forward

Why it exists (measured, docs/performance.md): running transformers' modules through a
`transformers.Cache` view of the pool costs a gather of every running sequence's history per
layer per step and pads batched prompts to the longest one. This module is the whole hot path
of a decode step in one screen, as gpt-fast and nano-vllm write it: the weights of the loaded
HF model (q/k/v and gate/up fused into one matmul each, the original parameters becoming views
of the fused tensors; with prepacked weights the engine then drops the dense copies, so nothing is
held twice), RMSNorm / rotary / SiLU-gated MLP written out
with transformers' exact op order, new K/V written straight into their pool slots, and
attention read straight from the blocks:

- decode rows (one query token per sequence): `suntool.kernels.paged_attention_cpu` on the CPU
  (a C kernel reading fp32 or bf16 blocks in place), else `suntool.kernels.paged_attention` (Triton on a
  GPU, the torch reference elsewhere);
- prompt rows, packed without padding: per sequence, `scaled_dot_product_attention` over its
  new tokens (causal) and, when it continues cached tokens (a prefix-cache hit, a recompute,
  a later chunk), its history gathered once from its blocks.

Supported: llama, mistral, qwen2, qwen3, phi3 (biases, Qwen3's q/k norms, partial rotary, rope
scaling through the model's own rotary module, sliding windows per layer). Anything else
(Gemma's norms and soft-capping, Affine-Scaled Attention, unknown variants) makes `build`
return None and the engine runs the model through transformers. `build` also checks itself:
a short prompt through this forward must match the transformers forward (logits within
`CHECK_TOLERANCE`), otherwise it returns None and logs why. Quantized projections (suntool's
QuantLinear) are called as modules, not fused. Inference only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from suntool.serve.kv_blocks import KVPool
    from suntool.serve.sequence import Sequence

log = logging.getLogger("suntool.serve")

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3")
_CPU_KERNEL_DTYPES = ("torch.float32", "torch.bfloat16")  # pool dtypes the C decode kernel reads
CHECK_TOLERANCE = 1e-3  # max |logit difference| / max |logit| of the self-check (fp32: ~1e-6 seen)
PACK_BATCH_HINT = 16  # rows oneDNN's weight reorder is tuned for (any row count runs on it)
KERNEL_SPAN_ROWS = 16  # prompt spans this short attend through the paged kernel (benchmarks/span_attention.py)


@dataclass
class PrefillSpan:
    """Tokens [start, end) of one sequence in a packed step: rows offset .. offset + end - start."""

    offset: int
    start: int
    end: int
    history: torch.Tensor | None  # pool slots of positions 0 .. start-1 (None when start == 0)
    table: torch.Tensor | None = None  # the sequence's block table (int64), for the paged kernel


@dataclass
class _PagedRows:
    """The rows of one forward whose attention the paged kernel computes, and the tables it reads."""

    rows: torch.Tensor | None  # row indices into the step (None: the first len(seq_lens) rows)
    block_tables: torch.Tensor  # [R, max_blocks]
    seq_lens: torch.Tensor  # [R]: keys each row sees (its position + 1)
    spans: list[PrefillSpan]  # the spans left to scaled_dot_product_attention


@dataclass
class StepInput:
    """One forward: decode rows first (one token per sequence), then packed prompt spans."""

    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_slots: torch.Tensor  # [T] pool slot of each token's K/V
    decode_rows: int
    block_tables: torch.Tensor | None  # [decode_rows, max_blocks]
    seq_lens: torch.Tensor | None  # [decode_rows], the new token included
    spans: list[PrefillSpan]
    logit_rows: torch.Tensor | None  # rows whose next-token logits are returned; None: none


def decode_input(pool: KVPool, seqs: list[Sequence]) -> StepInput:
    """The next token of every sequence (K/V of tokens[:num_cached] already in its blocks)."""
    import torch

    lengths = [seq.num_cached for seq in seqs]
    width = max(len(seq.block_table) for seq in seqs)
    tables = torch.zeros(len(seqs), width, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        tables[row, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int64)
    positions = torch.tensor(lengths, dtype=torch.int64)
    bs = pool.block_size
    slots = tables.gather(1, (positions // bs)[:, None])[:, 0] * bs + positions % bs
    ids = torch.tensor([seq.tokens[n] for seq, n in zip(seqs, lengths, strict=True)], dtype=torch.int64)
    device = pool.device
    return StepInput(
        token_ids=ids.to(device), positions=positions.to(device), write_slots=slots.to(device),
        decode_rows=len(seqs), block_tables=tables.to(device), seq_lens=(positions + 1).to(device), spans=[],
        logit_rows=torch.arange(len(seqs), device=device),
    )


def extend_input(pool: KVPool, spans: list[tuple[Sequence, int, int]], *, logits: bool) -> StepInput:
    """Tokens[start:end] of each sequence, packed; with `logits`, return each span's last-token logits."""
    import torch

    ids, positions, slots, packed, last = [], [], [], [], []
    offset = 0
    for seq, start, end in spans:
        tokens = seq.tokens[start:end]
        ids.append(torch.tensor(tokens, dtype=torch.int64))
        positions.append(torch.arange(start, end))
        slots.append(pool.slots([seq.block_table], [start], end - start)[0].cpu())
        history = pool.slots([seq.block_table], [0], start)[0] if start else None
        table = torch.tensor(seq.block_table, dtype=torch.int64)
        packed.append(PrefillSpan(offset=offset, start=start, end=end, history=history, table=table))
        offset += end - start
        last.append(offset - 1)
    device = pool.device
    return StepInput(
        token_ids=torch.cat(ids).to(device), positions=torch.cat(positions).to(device),
        write_slots=torch.cat(slots).to(device), decode_rows=0, block_tables=None, seq_lens=None, spans=packed,
        logit_rows=torch.tensor(last, device=device) if logits else None,
    )


def mixed_input(pool: KVPool, decode: list[Sequence], spans: list[tuple[Sequence, int, int]],
                span_logits: list[bool]) -> StepInput:
    """One forward over decode rows (the next token of each of `decode`) and packed prompt spans behind them
    (vLLM's chunked prefill): logits of every decode row, then of each span whose `span_logits` is True."""
    import torch

    if not spans:
        return decode_input(pool, decode)
    extend = extend_input(pool, spans, logits=True)
    if not decode and all(span_logits):
        return extend
    device = pool.device
    wanted = extend.logit_rows[torch.tensor(span_logits, dtype=torch.bool, device=device)]
    if not decode:
        extend.logit_rows = wanted if len(wanted) else None
        return extend
    rows = decode_input(pool, decode)
    count = rows.decode_rows
    return StepInput(
        token_ids=torch.cat([rows.token_ids, extend.token_ids]),
        positions=torch.cat([rows.positions, extend.positions]),
        write_slots=torch.cat([rows.write_slots, extend.write_slots]), decode_rows=count,
        block_tables=rows.block_tables, seq_lens=rows.seq_lens,
        spans=[PrefillSpan(offset=s.offset + count, start=s.start, end=s.end, history=s.history, table=s.table)
               for s in extend.spans],
        logit_rows=torch.cat([rows.logit_rows, wanted + count]),
    )


def _onednn_packing_available() -> bool:
    import torch

    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _Projection:
    """One or more linear layers applied to the same input, outputs concatenated (fused when plain).

    With `pack` (fp32 weights on the CPU, where oneDNN is built in) the weight is also reordered once
    into oneDNN's blocked layout and the matmul runs as `mkldnn._linear_pointwise` on it: measured
    ×1.5–3 faster than `F.linear` at 1–64 rows on an AVX2 CPU (docs/performance.md), the same
    reason vLLM's CPU backend prepacks its weights. The packed copy is a second copy of the weight.
    """

    def __init__(self, modules: list, *, pack: bool = False):
        import torch

        plain = all(type(m) is torch.nn.Linear for m in modules)
        self.modules, self.weight, self.bias, self.packed = modules, None, None, None
        if not plain:
            return
        if len(modules) == 1:
            self.weight, self.bias = modules[0].weight, modules[0].bias
        else:
            with torch.no_grad():
                self.weight = torch.cat([m.weight for m in modules]).contiguous()
                has_bias = [m.bias is not None for m in modules]
                if any(has_bias):
                    self.bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                                           for m in modules])
                offset = 0
                for m in modules:  # the modules now read the fused storage: no second copy of the weights
                    rows = m.weight.shape[0]
                    m.weight.data = self.weight[offset : offset + rows]
                    if m.bias is not None:
                        m.bias.data = self.bias[offset : offset + rows]
                    offset += rows
        if (pack and self.weight.device.type == "cpu" and self.weight.dtype == torch.float32
                and _onednn_packing_available()):
            with torch.no_grad():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_BATCH_HINT)

    def release_dense(self, keep: set[int]) -> int:
        """Drop the dense weights once the packed copy holds them; returns the bytes released.

        Weights whose storage is in `keep` (an lm_head tied to the embedding, which the embedding
        still reads) stay. The transformers modules lose their weights: calling one afterwards raises
        `RuntimeError` naming why, instead of computing with an empty tensor.
        """
        import torch

        if self.packed is None or self.weight is None:  # nothing held twice, or released already
            return 0
        weights = [m.weight for m in self.modules] + [self.weight]
        if any(w.untyped_storage().data_ptr() in keep for w in weights):
            return 0
        released = self.weight.numel() * self.weight.element_size()
        for m in self.modules:
            m.weight = torch.nn.Parameter(torch.empty(0, dtype=m.weight.dtype, device=m.weight.device),
                                          requires_grad=False)
            m.register_forward_pre_hook(_released_weight_hook)
        self.weight = None
        return released

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        if self.packed is not None and x.dim() == 2 and x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        return torch.cat([m(x) for m in self.modules], dim=-1)


def _released_weight_hook(module, args):
    raise RuntimeError(
        f"this {type(module).__name__}'s dense weight was released: the serving engine holds it only in "
        "oneDNN's packed layout (EngineConfig(release_dense_weights=False) keeps both)")


@dataclass
class _Layer:
    input_norm: Any
    qkv: _Projection
    q_norm: Any
    k_norm: Any
    o_proj: Any
    post_norm: Any
    gate_up: _Projection
    down: Any
    window: int | None


def _rms_norm(x, weight, eps: float):
    """transformers' LlamaRMSNorm, op for op."""
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate(x, cos, sin):
    """transformers' apply_rotary_pos_emb on one tensor [T, heads, D]; cos/sin [T, 1, rotary_dim]."""
    import torch

    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = (x_rot * cos) + (rotated * sin)
    return out if x_pass.shape[-1] == 0 else torch.cat([out, x_pass], dim=-1)


def _windows(config, model_type: str, num_layers: int) -> list[int | None]:
    window = getattr(config, "sliding_window", None)
    if model_type == "mistral":
        return [window] * num_layers
    types = getattr(config, "layer_types", None)
    if not types or window is None:
        return [None] * num_layers
    return [window if kind == "sliding_attention" else None for kind in types]


class CompactLM:
    """A supported causal LM's forward over `KVPool` (see the module docstring)."""

    def __init__(self, model, *, pack: bool = True):
        from transformers.activations import ACT2FN

        config = model.config
        self.model = model
        self.model_type = config.model_type
        self.num_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.act = ACT2FN[config.hidden_act]
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm.weight
        self.lm_head = _Projection([model.lm_head], pack=pack)
        windows = _windows(config, self.model_type, len(inner.layers))
        self.layers = []
        for layer, window in zip(inner.layers, windows, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = [attn.qkv_proj] if hasattr(attn, "qkv_proj") else [attn.q_proj, attn.k_proj, attn.v_proj]
            gate_up = [mlp.gate_up_proj] if hasattr(mlp, "gate_up_proj") else [mlp.gate_proj, mlp.up_proj]
            self.layers.append(_Layer(
                input_norm=layer.input_layernorm.weight, qkv=_Projection(qkv, pack=pack),
                q_norm=attn.q_norm.weight if hasattr(attn, "q_norm") else None,
                k_norm=attn.k_norm.weight if hasattr(attn, "k_norm") else None,
                o_proj=_Projection([attn.o_proj], pack=pack), post_norm=layer.post_attention_layernorm.weight,
                gate_up=_Projection(gate_up, pack=pack), down=_Projection([mlp.down_proj], pack=pack), window=window,
            ))
        self.scale = float(getattr(inner.layers[0].self_attn, "scaling", self.head_dim**-0.5))
        self.released_bytes = 0  # dense weights dropped because the packed copies serve them

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def supports(cls, model) -> str | None:
        """None when `model` can run here, else why not."""
        from suntool.affine_attention import is_affine

        config = model.config
        kind = getattr(config, "model_type", None)
        if kind not in SUPPORTED:
            return f"model type {kind!r} (the compact forward covers {', '.join(SUPPORTED)})"
        if is_affine(config.to_dict()):
            return "Affine-Scaled Attention"
        if getattr(config, "pretraining_tp", 1) not in (1, None):
            return "pretraining_tp > 1"
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
            return "an unexpected module layout"
        if model.training:
            return "a model in training mode"
        return None

    @classmethod
    def build(cls, model, *, check: bool = True, pack: bool = True, release: bool = False) -> CompactLM | None:
        """A runner for `model`, or None (and a log line saying why) when transformers must run it.

        With `release` (and packed weights) the dense copies are dropped after the self-check
        (`release_dense_weights`): the model's transformers modules cannot run any more.
        """
        reason = cls.supports(model)
        if reason is None:
            runner = cls(model, pack=pack)
            reason = runner.self_check() if check else None
            if reason is None:
                if release:
                    runner.release_dense_weights()
                return runner
        log.info("compact forward off for %s: %s; using transformers", type(model).__name__, reason)
        return None

    def projections(self) -> list[_Projection]:
        return [self.lm_head] + [p for layer in self.layers for p in (layer.qkv, layer.o_proj, layer.gate_up,
                                                                      layer.down)]

    def release_dense_weights(self) -> int:
        """Drop every dense projection weight that a packed copy duplicates; returns the bytes released.

        Packing (`_Projection`) keeps a second, oneDNN-blocked copy of each weight; the transformers
        modules' dense copies are then only needed to run the model through transformers, which the
        engine no longer does for this half. A 135M model in fp32 holds ~0.4 GB less per half. The
        embedding (and an lm_head tied to it) stays.
        """
        import torch

        keep = {self.embed.weight.untyped_storage().data_ptr()}
        released = sum(projection.release_dense(keep) for projection in self.projections())
        if released:  # what stays (embedding, norms, biases) into memory of its own: the checkpoint file's
            with torch.no_grad():  # mapping, which the loader's tensors are views of, can then be unmapped
                for parameter in self.model.parameters():
                    if parameter.numel():
                        parameter.data = parameter.data.clone()
            log.info("released %.0f MiB of dense weights held twice (packed copies serve them)", released / 2**20)
        self.released_bytes += released
        return released

    def self_check(self, length: int = 6) -> str | None:
        """Compare a short prompt and one decode step with the transformers forward; None when they agree."""
        import torch

        from suntool.serve.kv_blocks import KVPool
        from suntool.serve.sequence import SamplingParams, Sequence

        model = self.model
        pool = KVPool(**KVPool.geometry(model.config), num_blocks=4, block_size=4, dtype=model.dtype,
                      device=model.device)
        generator = torch.Generator().manual_seed(0)
        vocab = min(model.config.vocab_size, 1000)
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        seq = Sequence(model=None, prompt_ids=ids, params=SamplingParams(), sink=lambda event: None)
        seq.block_table = [2, 3]  # blocks 0/1 are the pool's reserved ones
        with torch.inference_mode():
            ours = torch.cat([
                self.forward(pool, extend_input(pool, [(seq, 0, length - 1)], logits=True)),
                self.forward(pool, _decode_at(pool, seq, length - 1)),
            ])
            reference = model(torch.tensor([ids]), use_cache=False).logits[0, -2:].to(ours.dtype)
        scale = reference.abs().max().clamp(min=1e-6)
        error = float((ours - reference).abs().max() / scale)
        if not error <= CHECK_TOLERANCE:
            return f"its logits differ from transformers' by {error:.2e} (relative), above {CHECK_TOLERANCE}"
        return None

    # -- the forward -----------------------------------------------------------------------------------------------
    def forward(self, pool: KVPool, step: StepInput):
        """Run one packed step; K/V land in `step.write_slots`; logits [len(logit_rows), V] or None."""
        h = self.embed(step.token_ids)
        cos, sin = self.rotary(h[None], step.positions[None])
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]
        heads, kv_heads, dim = self.num_heads, self.kv_heads, self.head_dim
        q_size, kv_size = heads * dim, kv_heads * dim
        paged = self._paged_rows(pool, step)
        for index, layer in enumerate(self.layers):
            x = _rms_norm(h, layer.input_norm, self.eps)
            qkv = layer.qkv(x)
            q = qkv[:, :q_size].view(-1, heads, dim)
            k = qkv[:, q_size : q_size + kv_size].view(-1, kv_heads, dim)
            v = qkv[:, q_size + kv_size :].view(-1, kv_heads, dim)
            if layer.q_norm is not None:
                q = _rms_norm(q, layer.q_norm, self.eps)
                k = _rms_norm(k, layer.k_norm, self.eps)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            pool.write(index, step.write_slots, k, v)
            attn = self._attention(pool, index, layer.window, paged, q, k, v)
            h = h + layer.o_proj(attn.reshape(-1, q_size))
            x = _rms_norm(h, layer.post_norm, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(self.act(gate) * up)
        if step.logit_rows is None:
            return None
        return self.lm_head(_rms_norm(h.index_select(0, step.logit_rows), self.norm, self.eps))

    def _paged_rows(self, pool: KVPool, step: StepInput) -> _PagedRows:
        """Which rows the paged kernel attends (once per forward): every decode row and, where the CPU kernel
        runs, the rows of spans of at most `KERNEL_SPAN_ROWS` tokens — their K/V are in the pool before
        attention, so row i of a span is a decode row at position start + i. One kernel call then replaces a
        gather, a mask and an SDPA per span per layer (a burst of prefix-cache hits is dozens of short spans)."""
        import torch

        from suntool.kernels.paged_attention_cpu import cpu_kernel_available

        decode = _PagedRows(None, step.block_tables, step.seq_lens, step.spans)
        keys = pool.keys[0]
        if keys.device.type != "cpu" or str(keys.dtype) not in _CPU_KERNEL_DTYPES or not cpu_kernel_available():
            return decode
        short, kept = [], []
        for span in step.spans:
            (short if span.table is not None and span.end - span.start <= KERNEL_SPAN_ROWS else kept).append(span)
        if not short:
            return decode
        rows = [torch.arange(step.decode_rows)] + [torch.arange(s.offset, s.offset + s.end - s.start) for s in short]
        lens = ([step.seq_lens.cpu()] if step.decode_rows else []) + [torch.arange(s.start + 1, s.end + 1)
                                                                       for s in short]
        width = max([len(s.table) for s in short] + ([step.block_tables.shape[1]] if step.decode_rows else []))
        tables = torch.zeros(sum(len(r) for r in rows), width, dtype=torch.int64)
        if step.decode_rows:
            tables[: step.decode_rows, : step.block_tables.shape[1]] = step.block_tables.cpu()
        at = step.decode_rows
        for span in short:
            count = span.end - span.start
            tables[at : at + count, : len(span.table)] = span.table
            at += count
        return _PagedRows(torch.cat(rows), tables, torch.cat(lens), kept)

    def _attention(self, pool: KVPool, index: int, window: int | None, paged: _PagedRows, q, k, v):
        import torch

        out = torch.empty_like(q)
        if paged.seq_lens is not None and len(paged.seq_lens):
            if paged.rows is None:
                count = len(paged.seq_lens)
                out[:count] = self._paged_attention(pool, index, window, paged, q[:count])
            else:
                out[paged.rows] = self._paged_attention(pool, index, window, paged, q.index_select(0, paged.rows))
        for span in paged.spans:
            rows_of = slice(span.offset, span.offset + span.end - span.start)
            out[rows_of] = self._span_attention(pool, index, window, span, q[rows_of], k[rows_of], v[rows_of])
        return out

    def _paged_attention(self, pool: KVPool, index: int, window: int | None, paged: _PagedRows, q):
        from suntool.kernels.paged_attention import paged_attention
        from suntool.kernels.paged_attention_cpu import cpu_kernel_available, paged_attention_cpu

        shape = (pool.num_blocks, pool.block_size, self.kv_heads, self.head_dim)
        keys, values = pool.keys[index].view(shape), pool.values[index].view(shape)
        args = (q, keys, values, paged.block_tables, paged.seq_lens, self.scale)
        if q.device.type == "cpu" and str(keys.dtype) in _CPU_KERNEL_DTYPES and cpu_kernel_available():
            return paged_attention_cpu(*args, sliding_window=window)
        return paged_attention(*args, sliding_window=window, validate=False)

    def _span_attention(self, pool: KVPool, index: int, window: int | None, span: PrefillSpan, q, k, v):
        import torch
        import torch.nn.functional as F

        count = span.end - span.start
        if span.history is not None:
            k = torch.cat([pool.keys[index].index_select(0, span.history).to(k.dtype), k])
            v = torch.cat([pool.values[index].index_select(0, span.history).to(v.dtype), v])
        mask = None
        if span.start or window is not None:
            query_pos = torch.arange(span.start, span.end, device=q.device)[:, None]
            key_pos = torch.arange(span.end, device=q.device)[None, :]
            mask = key_pos <= query_pos
            if window is not None:
                mask &= key_pos > query_pos - window
        groups = self.num_heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask, is_causal=mask is None and count > 1, scale=self.scale,
        )
        return out[0].transpose(0, 1)


def _decode_at(pool: KVPool, seq: Sequence, cached: int) -> StepInput:
    seq.num_cached = cached
    return decode_input(pool, [seq])
