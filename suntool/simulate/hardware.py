"""Devices for the roofline: a small table of well-known accelerators and custom ones from flags.

`device_spec(name, bandwidth=, flops=, memory=)` returns a `DeviceSpec` (HBM bandwidth in
bytes/s, dense bf16 FLOP/s, memory in bytes). Known names are matched case-insensitively
(`H100`, `h100-sxm`, `A100-80GB`, ...); any of the three flags overrides the table's value,
and `custom` (or an unknown name with all three flags) builds one from the flags alone.
Figures are the vendors' datasheet peaks (dense, no sparsity); the roofline applies its
own efficiency factors (`suntool.simulate.costs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from suntool.errors import SuntoolError

GB = 1e9
TB = 1e12


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    bandwidth: float  # bytes/s (HBM)
    flops: float  # dense bf16 FLOP/s
    memory: float  # bytes

    def describe(self) -> str:
        return (f"{self.name}: {self.bandwidth / TB:.2f} TB/s, {self.flops / TB:.0f} bf16 TFLOP/s, "
                f"{self.memory / GB:.0f} GB")


DEVICES: dict[str, DeviceSpec] = {d.name.lower(): d for d in (
    DeviceSpec("H100-SXM", 3.35 * TB, 989 * TB, 80 * GB),
    DeviceSpec("H100-PCIe", 2.0 * TB, 756 * TB, 80 * GB),
    DeviceSpec("H200", 4.8 * TB, 989 * TB, 141 * GB),
    DeviceSpec("B200", 8.0 * TB, 2250 * TB, 180 * GB),
    DeviceSpec("A100-80GB", 2.039 * TB, 312 * TB, 80 * GB),
    DeviceSpec("A100-40GB", 1.555 * TB, 312 * TB, 40 * GB),
    DeviceSpec("L40S", 0.864 * TB, 362 * TB, 48 * GB),
    DeviceSpec("L4", 0.3 * TB, 121 * TB, 24 * GB),
    DeviceSpec("A10G", 0.6 * TB, 70 * TB, 24 * GB),
    DeviceSpec("MI300X", 5.3 * TB, 1307 * TB, 192 * GB),
)}
ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "b100": "b200", "gh200": "h200"}


def device_spec(name: str, *, bandwidth: float | None = None, flops: float | None = None,
                memory: float | None = None) -> DeviceSpec:
    """The named device, with any of bandwidth (B/s), flops (FLOP/s) or memory (bytes) overridden."""
    for label, value in (("--device-bandwidth", bandwidth), ("--device-flops", flops), ("--device-memory", memory)):
        if value is not None and not value > 0:
            raise SuntoolError(f"{label} must be positive, got {value}")
    key = ALIASES.get(name.lower(), name.lower())
    if key in DEVICES:
        base = DEVICES[key]
    elif bandwidth and flops and memory:
        base = DeviceSpec(name, bandwidth, flops, memory)
    else:
        known = ", ".join(d.name for d in DEVICES.values())
        raise SuntoolError(f"unknown device {name!r}; use one of {known}, or describe it with "
                           "--device custom --device-bandwidth TB/s --device-flops TFLOP/s --device-memory GB")
    return replace(base, bandwidth=bandwidth or base.bandwidth, flops=flops or base.flops,
                   memory=memory or base.memory)
