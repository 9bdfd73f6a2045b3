"""Writing a deployment plan to disk: launch scripts, connector, plan.json, README, docker-compose.

`write_plan(plan, out, force=False)` writes, atomically (`suntool.atomic.atomic_dir`: an
interrupted write leaves nothing that looks complete):

```
PLAN/
  plan.json                    # the plan (what `suntool deploy run|router PLAN` read)
  instances/<name>.sh          # one launch script per vLLM instance: env, flags, connector JSON
  router.sh                    # the OpenAI front: `python -m suntool deploy router PLAN`
  suntool_kv_connector.py      # the KV connector vLLM imports (kv_connector_module_path)
  docker-compose.yaml          # the same processes as services (network_mode: host)
  README.md                    # what runs where, and how to start it
```

The scripts are the single source of truth: `suntool deploy vllm --run` executes them.
`vllm_argv(plan, inst)` and `kv_transfer_config(plan, inst)` build one instance's flags.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from suntool.deploy.plan import CONNECTOR_CLASS, CONNECTOR_MODULE, PLAN_FILE, DeployPlan, Instance
from suntool.errors import SuntoolError

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def kv_transfer_config(plan: DeployPlan, inst: Instance) -> dict:
    """The `--kv-transfer-config` JSON of one instance."""
    if plan.connector == "example":
        extra = {"shared_storage_path": plan.kv_dir}
        if inst.kv_key:
            extra["kv_key"] = inst.kv_key
        return {"kv_connector": CONNECTOR_CLASS, "kv_connector_module_path": CONNECTOR_MODULE,
                "kv_role": inst.kv_role, "kv_connector_extra_config": extra}
    if plan.connector == "nixl":  # K/V moves per request (kv_transfer_params from the prefill response)
        return {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    return {"kv_connector": "LMCacheConnectorV1", "kv_role": inst.kv_role}


def _max_lora_rank(inst: Instance) -> int:
    ranks = []
    for _, adapter in inst.lora_modules:
        try:
            ranks.append(int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16)))
        except (OSError, ValueError) as err:
            raise SuntoolError(f"cannot read the LoRA adapter {adapter}/adapter_config.json ({err})") from err
    need = max(ranks, default=16)
    return next((r for r in LORA_RANKS if r >= need), need)


def vllm_argv(plan: DeployPlan, inst: Instance) -> list[str]:
    """The vLLM OpenAI server's command line for one instance (after the python executable)."""
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", inst.model_dir,
            "--served-model-name", inst.served_name, "--host", "127.0.0.1", "--port", str(inst.port),
            "--dtype", plan.dtype, "--kv-transfer-config", json.dumps(kv_transfer_config(plan, inst))]
    if plan.max_model_len:
        argv += ["--max-model-len", str(plan.max_model_len)]
    if plan.enforce_eager:
        argv.append("--enforce-eager")
    if inst.lora_modules:
        argv += ["--enable-lora", "--max-loras", str(len(inst.lora_modules)),
                 "--max-lora-rank", str(_max_lora_rank(inst)), "--lora-modules"]
        argv += [f"{name}={path}" for name, path in inst.lora_modules]
    if inst.quantization:
        argv += ["--quantization", inst.quantization]
    return argv + list(plan.vllm_args)


def vllm_env(plan: DeployPlan, inst: Instance | None = None) -> dict[str, str]:
    """Environment of an instance (CPU: KV cache size, no reserved core, its cores, Intel OpenMP preloaded)."""
    if plan.device != "cpu":
        return {}
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{plan.kv_cache_gib:g}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    if inst is not None and inst.cpu_cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = inst.cpu_cores
    iomp = Path(plan.vllm_python).parent.parent / "lib" / "libiomp5.so"
    if iomp.is_file():
        env["LD_PRELOAD"] = str(iomp.absolute())
    return env


def instance_script(plan: DeployPlan, inst: Instance, plan_dir: Path) -> str:
    lines = ["#!/usr/bin/env bash", f"# {inst.name}: vLLM {inst.half} instance ({inst.kv_role}) of a suntool "
             f"{plan.mode} deployment; written by `suntool deploy vllm`.", "set -euo pipefail",
             f'export PYTHONPATH={shlex.quote(str(plan_dir))}"${{PYTHONPATH:+:$PYTHONPATH}}"']
    lines += [f"export {key}={shlex.quote(value)}" for key, value in vllm_env(plan, inst).items()]
    argv = [plan.vllm_python, *vllm_argv(plan, inst)]
    groups: list[list[str]] = []
    for arg in argv:  # one flag and its values per line
        if not groups or (arg.startswith("--") and groups[-1] != ["-m"]):
            groups.append([])
        groups[-1].append(shlex.quote(arg))
    lines.append("exec " + " \\\n  ".join(" ".join(g) for g in groups) + ' "$@"')
    return "\n".join(lines) + "\n"


def router_script(plan: DeployPlan, plan_dir: Path) -> str:
    argv = [sys.executable, "-m", "suntool", "deploy", "router", str(plan_dir)]
    return ("#!/usr/bin/env bash\n# The suntool router (OpenAI API) in front of the vLLM instances.\n"
            "# SUNTOOL_API_KEY, when set, is required as 'Authorization: Bearer KEY' on /v1/*.\nset -euo pipefail\n"
            "exec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')


def compose_file(plan: DeployPlan, plan_dir: Path) -> str:
    import yaml

    mounts = sorted({str(Path(inst.model_dir)) for inst in plan.instances}
                    | {str(Path(path)) for inst in plan.instances for _, path in inst.lora_modules})
    volumes = [f"{m}:{m}:ro" for m in mounts] + [f"{plan.kv_dir}:{plan.kv_dir}", f"{plan_dir}:{plan_dir}:ro"]
    services = {}
    for inst in plan.instances:
        env = {"PYTHONPATH": str(plan_dir), **{k: v for k, v in vllm_env(plan, inst).items() if k != "LD_PRELOAD"}}
        service = {"image": "${VLLM_IMAGE:-vllm/vllm-openai:v0.32.0}", "network_mode": "host",
                   "entrypoint": ["python3"], "command": vllm_argv(plan, inst), "environment": env,
                   "volumes": volumes, "ipc": "host"}
        if plan.device == "cuda":
            service["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}
        services[inst.name] = service
    services["router"] = {"image": "${SUNTOOL_IMAGE:-suntool}", "network_mode": "host",
                          "command": ["suntool", "deploy", "router", str(plan_dir)],
                          "environment": {"SUNTOOL_API_KEY": "${SUNTOOL_API_KEY:-}"},
                          "volumes": [f"{plan_dir}:{plan_dir}:ro"], "depends_on": [i.name for i in plan.instances]}
    header = ("# The deployment as containers (one GPU per vLLM instance when device is cuda). VLLM_IMAGE: a vLLM\n"
              "# 0.32 image; SUNTOOL_IMAGE: any image with suntool installed. Paths are this machine's: run it\n"
              "# where the artifacts live at the same paths (shared storage), or edit the volumes.\n")
    return header + yaml.safe_dump({"services": services}, sort_keys=False, width=120)


def readme(plan: DeployPlan, plan_dir: Path) -> str:
    rows = "\n".join(
        f"| {i.name} | {i.half} ({i.kv_role}) | {i.port} | `{i.model_dir}` | "
        f"{', '.join(n for n, _ in i.lora_modules) or i.served_name} |" for i in plan.instances)
    routes = "\n".join(
        f"| {m.name} | {', '.join(m.prefill_pool)} as `{m.prefill_model}` | {', '.join(m.decode_pool)} as "
        f"`{m.decode_model}` | `{m.kv_key}` |" for m in plan.models)
    layout = "shared" if plan.share else "dedicated (one instance per task model: the baseline)"
    notes = "".join(f"- {note}\n" for note in plan.notes)
    return f"""# suntool deployment on vLLM ({plan.mode}, {layout})

Written by `suntool deploy vllm`. Connector: `{plan.connector}`; device: {plan.device}; dtype: {plan.dtype}.

Start everything (waits for health, prints the endpoint, stops it all on Ctrl-C/SIGTERM):

```bash
suntool deploy run {plan_dir}
```

or by hand: `instances/*.sh` (one vLLM server each), then `router.sh`; or `docker compose up`.
The OpenAI endpoint is the router: `http://{plan.host}:{plan.router_port}/v1`.

| instance | role | port | weights | serves |
|---|---|---:|---|---|
{rows}

| model | prefill (max_tokens=1) | decode (least loaded) | K/V key |
|---|---|---|---|
{routes}

How a request runs: the router sends it to its model's prefill instance with `max_tokens=1` and
`kv_transfer_params.suntool_kv_key`; the prefill instance stores the K/V of `prompt[:-1]` under that
key; the router then sends the original request to the least-loaded instance of the model's decode
pool (with the key, and `cache_salt` = the key so vLLM's own prefix cache never mixes task models),
which loads that K/V, recomputes only the last prompt token with the decode half and streams the
answer back through the router.

The `example` connector (`suntool_kv_connector.py`) moves K/V through files under `{plan.kv_dir}`,
keyed by the prefill weights (see the module's docstring). Every prompt token but the last is
transferred whatever vLLM's block size (128 on CPU), so short prompts are exact too. Files are not
deleted while the deployment runs; remove the folder when it is stopped.
{notes}"""


def write_plan(plan: DeployPlan, out: str | Path, *, force: bool = False) -> Path:
    """Write the plan's files into `out` atomically; refuse an existing `out` unless `force`."""
    from suntool.atomic import atomic_dir

    out = Path(out).absolute()
    if out.exists() and not force:
        raise SuntoolError(f"{out} already exists; choose another -o or pass --force to replace it")
    connector = Path(__file__).with_name("vllm_connector.py").read_text(encoding="utf-8")
    with atomic_dir(out, replace=force) as tmp:
        (tmp / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
        (tmp / f"{CONNECTOR_MODULE}.py").write_text(connector, encoding="utf-8")
        (tmp / "instances").mkdir()
        for inst in plan.instances:
            script = tmp / "instances" / f"{inst.name}.sh"
            script.write_text(instance_script(plan, inst, out), encoding="utf-8")
            script.chmod(0o755)
        (tmp / "router.sh").write_text(router_script(plan, out), encoding="utf-8")
        (tmp / "router.sh").chmod(0o755)
        (tmp / "docker-compose.yaml").write_text(compose_file(plan, out), encoding="utf-8")
        (tmp / "README.md").write_text(readme(plan, out), encoding="utf-8")
    Path(plan.kv_dir).mkdir(parents=True, exist_ok=True)
    return out
