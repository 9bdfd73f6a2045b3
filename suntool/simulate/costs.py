"""What a forward costs: a roofline of a device and a model, or a measured profile.

Both cost models answer the same questions for the simulator:

- `prefill(rows)`: seconds of one prefill forward over a batch, `rows` holding per prompt
  (new tokens, tokens already cached by a prefix hit);
- `decode(batch, context_tokens)`: seconds of one decode forward over `batch` sequences
  whose contexts sum to `context_tokens`;
- `kv_capacity(halves)`: KV tokens a decode instance holds next to `halves` model halves
  (None: unbounded); `transfer(tokens)`: seconds to move a prompt's K/V to decode.

`Roofline`: time = max(FLOPs / (peak × flops_eff), bytes / (bandwidth × bandwidth_eff))
+ a fixed per-forward overhead. FLOPs are 2 per weight per token (the LM head only for
the last prompt token in prefill, every token in decode) plus attention (4·heads·head_dim
per token per layer per visible key); bytes are the weights once per forward plus the
K/V read and written. `decode_bits=4` (QSUN) reads 4-bit weights plus one bf16 scale and
zero per group of 128 for the decoder layers (the LM head stays bf16, as suntool
quantizes it). `ProfileCosts` interpolates a `suntool bench --profile` measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from suntool.errors import SuntoolError
from suntool.simulate.hardware import DeviceSpec
from suntool.simulate.modelcfg import ModelShape
from suntool.simulate.profile import Profile

MEMORY_UTILIZATION = 0.9  # share of device memory for weights + KV (as vLLM's gpu_memory_utilization)


@dataclass(frozen=True)
class Roofline:
    device: DeviceSpec
    model: ModelShape
    decode_bits: int = 16
    group_size: int = 128
    bandwidth_eff: float = 0.8
    flops_eff: float = 0.6
    overhead: float = 0.002  # seconds per forward: launches, scheduling, sampling
    link_bandwidth: float = 50e9  # bytes/s between a prefill and a decode instance (400 Gb/s)
    max_batch: int = 256
    max_prefill_tokens: int = 8192
    round_robin: bool = False  # at most max_batch sequences run; the rest wait (vLLM's max_num_seqs)

    @property
    def label(self) -> str:
        bits = "" if self.decode_bits == 16 else f", decode {self.decode_bits}-bit"
        return f"roofline {self.device.name} · {self.model.name} bf16{bits}"

    def weight_bytes(self, *, decode: bool) -> float:
        m = self.model
        if decode and self.decode_bits < 16:
            per_weight = self.decode_bits / 8 + 4 / self.group_size  # bf16 scale + zero per group
            layers = m.layer_params * per_weight
        else:
            layers = m.layer_params * 2
        return layers + m.head_params * 2 * (1 if m.tied else 2)

    def _time(self, flops: float, nbytes: float) -> float:
        d = self.device
        return max(flops / (d.flops * self.flops_eff), nbytes / (d.bandwidth * self.bandwidth_eff)) + self.overhead

    def _attention_flops(self, queries: float, keys: float) -> float:
        m = self.model
        return 4 * m.layers * m.heads * m.head_dim * queries * keys

    def prefill(self, rows: list[tuple[int, int]]) -> float:
        m, kv = self.model, self.model.kv_bytes_per_token()
        new = sum(n for n, _ in rows)
        flops = 2 * m.layer_params * new + 2 * m.head_params * len(rows)
        flops += sum(self._attention_flops(n, c + n / 2) for n, c in rows)
        nbytes = self.weight_bytes(decode=False) + kv * sum(n + c for n, c in rows)
        return self._time(flops, nbytes)

    def decode(self, batch: int, context_tokens: int) -> float:
        m, kv = self.model, self.model.kv_bytes_per_token()
        flops = 2 * (m.layer_params + m.head_params) * batch + self._attention_flops(1, context_tokens)
        nbytes = self.weight_bytes(decode=True) + kv * (context_tokens + batch)
        return self._time(flops, nbytes)

    def kv_capacity(self, halves: int, *, decode: bool = True) -> int:
        free = self.device.memory * MEMORY_UTILIZATION - halves * self.weight_bytes(decode=decode)
        if free <= 0:
            size = self.weight_bytes(decode=decode) / 1e9
            if halves == 1:
                raise SuntoolError(
                    f"{self.model.name} ({size:.1f} GB of weights) leaves no room for a KV cache on one "
                    f"{self.device.name} ({self.device.memory / 1e9:.0f} GB); use a larger device or a smaller model "
                    "(tensor parallelism is not simulated)")
            raise SuntoolError(
                f"{halves} copies of {self.model.name} ({size:.1f} GB each) leave no room for a KV cache on one "
                f"{self.device.name}; give that stage more devices (--prefill-devices / --decode-devices)")
        return int(free / self.model.kv_bytes_per_token())

    def transfer(self, tokens: int) -> float:
        return tokens * self.model.kv_bytes_per_token() / self.link_bandwidth if self.link_bandwidth else 0.0

    def quantized(self, bits: int = 4) -> Roofline:
        from dataclasses import replace

        return replace(self, decode_bits=bits)


@dataclass(frozen=True)
class ProfileCosts:
    profile: Profile
    round_robin: bool = True  # the local engine admits every sequence that fits; max_batch per forward, in turn

    @property
    def label(self) -> str:
        return f"profile {self.profile.source}"

    @property
    def max_batch(self) -> int:
        return self.profile.max_batch

    @property
    def max_prefill_tokens(self) -> int:
        return self.profile.max_prefill_tokens

    def prefill(self, rows: list[tuple[int, int]]) -> float:
        return self.profile.prefill(sum(n for n, _ in rows))  # packed: real tokens, no padding

    def decode(self, batch: int, context_tokens: int) -> float:
        return self.profile.decode_step(batch, context_tokens / batch)

    def kv_capacity(self, halves: int, *, decode: bool = True) -> int | None:
        return self.profile.kv_capacity_tokens

    def transfer(self, tokens: int) -> float:
        return 0.0  # in-process: a copy into the shared pool (0.5 ms for 128 tokens, docs/serving.md)
