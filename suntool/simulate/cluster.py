"""Which instances a layout runs and which task models each one holds.

A layout decides how task models map onto *groups* (one set of weights, batched
together) at each stage:

| layout | prefill groups | decode groups |
|---|---|---|
| `dedicated` (conventional P/D) | one per model | one per model |
| `sun` | one per model (task prefill halves) | one shared by all models |
| `qsun` | one per model | one shared, 4-bit weights |
| `prefillshare` | one shared by all (and its prefix cache) | one per model (task decode halves) |

`plan_cluster(ClusterConfig(...))` places the groups on `prefill_devices` and
`decode_devices` instances (default: one per model each, the same budget for every
layout). A shared group runs on every instance of its stage (any decode instance can
finish any model's request). Per-model groups: with at least as many instances as
groups, each instance holds one group and the extra instances go to the most popular
models (largest-remainder by popularity, as an operator would size replicas); with
fewer, instance i holds groups i, i+N, ... and runs one forward per group in turn (as
the local engine's one decode worker does for several `--no-share` decoders).
`shared_host_cores` puts every instance on one host of that many cores as threads
(the local engine on a CPU); otherwise each instance is its own device.
"""

from __future__ import annotations

from dataclasses import dataclass

from suntool.errors import SuntoolError

LAYOUTS = ("dedicated", "sun", "qsun", "prefillshare")


@dataclass(frozen=True)
class ClusterConfig:
    layout: str
    models: int
    prefill_devices: int | None = None  # None: one per model
    decode_devices: int | None = None  # None: one per model
    shared_host_cores: int | None = None  # all instances threads of one host with this many cores
    popularity: tuple[float, ...] | None = None  # per model; sizes replicas of per-model groups
    prefix_cache: bool = True

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise SuntoolError(f"unknown layout {self.layout!r}; use one of {', '.join(LAYOUTS)}")
        for flag, value in (("--prefill-devices", self.prefill_devices), ("--decode-devices", self.decode_devices)):
            if value is not None and value < 1:
                raise SuntoolError(f"{flag} must be at least 1, got {value}")
        if self.shared_host_cores is not None and self.shared_host_cores < 1:
            raise SuntoolError(f"host cores must be at least 1, got {self.shared_host_cores}")

    @property
    def prefill_shared(self) -> bool:
        return self.layout == "prefillshare"

    @property
    def decode_shared(self) -> bool:
        return self.layout in ("sun", "qsun")


@dataclass(frozen=True)
class ClusterPlan:
    prefill: tuple[tuple[int, ...], ...]  # per prefill instance: the prefill groups it holds
    decode: tuple[tuple[int, ...], ...]
    prefill_group: tuple[int, ...]  # per model
    decode_group: tuple[int, ...]

    @property
    def devices(self) -> int:
        return len(self.prefill) + len(self.decode)


def _place(groups: int, instances: int, shares: list[float]) -> tuple[tuple[int, ...], ...]:
    if groups == 1:
        return tuple((0,) for _ in range(instances))
    if instances < groups:
        return tuple(tuple(range(i, groups, instances)) for i in range(instances))
    counts = [1] * groups
    for _ in range(instances - groups):  # D'Hondt: next replica to the group with the highest share per replica
        best = max(range(groups), key=lambda g: (shares[g] / counts[g], -g))
        counts[best] += 1
    return tuple((g,) for g in range(groups) for _ in range(counts[g]))


def plan_cluster(config: ClusterConfig) -> ClusterPlan:
    config.validate()
    m = config.models
    shares = list(config.popularity) if config.popularity else [1.0 / m] * m
    prefill_groups = 1 if config.prefill_shared else m
    decode_groups = 1 if config.decode_shared else m
    return ClusterPlan(
        prefill=_place(prefill_groups, config.prefill_devices or m, shares),
        decode=_place(decode_groups, config.decode_devices or m, shares),
        prefill_group=tuple(0 if config.prefill_shared else i for i in range(m)),
        decode_group=tuple(0 if config.decode_shared else i for i in range(m)),
    )
