"""`suntool deploy vllm ART... -o PLAN [--run]`, `suntool deploy run PLAN`, `suntool deploy router PLAN`."""

from __future__ import annotations

from pathlib import Path

import typer

from suntool.commands._ui import console, err_console

deploy_app = typer.Typer(help="Deploy artifacts on another engine (vLLM disaggregated prefill/decode).",
                         no_args_is_help=True)


def _run(plan_dir: Path, api_key: str | None, start_timeout: float) -> None:
    from suntool.deploy.launch import run_plan

    def ready(url: str, plan) -> None:
        console.print(f"suntool deploy: {len(plan.instances)} vLLM instance(s) healthy · models "
                      f"{', '.join(m.name for m in plan.models)}")
        console.print(f"suntool deploy: OpenAI endpoint {url}/v1 (Ctrl-C stops everything)", markup=False)
        console.file.flush()

    run_plan(plan_dir, api_key=api_key, progress=lambda message: err_console.print(f"[dim]·[/] {message}"),
             on_ready=ready, start_timeout=start_timeout)
    console.print("suntool deploy: stopped")


@deploy_app.command("vllm")
def vllm_command(
    artifacts: list[str] = typer.Argument(..., help="SUN or PrefillShare artifacts, one task model each."),
    out: Path = typer.Option(..., "-o", "--output", help="Plan directory to write."),
    names: list[str] = typer.Option(None, "--name", help="API model name per artifact, in order (default: dir name)."),
    connector: str = typer.Option("example", "--connector", help="example (disk, one machine) | nixl | lmcache."),
    decode_instances: int = typer.Option(1, "--decode-instances", min=1, help="SUN: shared decode pool size."),
    prefill_instances: int = typer.Option(1, "--prefill-instances", min=1, help="PrefillShare: prefill pool size."),
    dedicated: bool = typer.Option(False, "--dedicated", help="Baseline: own prefill and decode instance per model."),
    lora: bool = typer.Option(False, "--lora", help="SUN-LoRA: every adapter on one prefill instance per base."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16 (vLLM's --dtype)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    host: str = typer.Option("127.0.0.1", "--host", help="Router address."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Router port."),
    base_port: int = typer.Option(8100, "--base-port", min=1, max=65535, help="First instance port."),
    vllm_python: str = typer.Option(".venv-vllm/bin/python", "--vllm-python", help="Python of a venv with vLLM."),
    kv_dir: str = typer.Option(None, "--kv-dir", help="Example connector storage (default: PLAN/kv)."),
    max_model_len: int = typer.Option(None, "--max-model-len", min=2, help="vLLM --max-model-len."),
    kv_cache_gib: float = typer.Option(2.0, "--kv-cache-gib", min=0.1, help="CPU: KV cache per instance (GiB)."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="vLLM --enforce-eager (fast start)."),
    vllm_args: list[str] = typer.Option(None, "--vllm-arg", help="Extra vLLM flag for every instance (repeatable)."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Deploy task halves trained elsewhere."),
    cpu_bind: str = typer.Option("auto", "--cpu-bind", help="CPU: auto (own cores per instance) or none."),
    force: bool = typer.Option(False, "--force", help="Replace an existing plan directory."),
    run: bool = typer.Option(False, "--run", help="Start the plan now (until Ctrl-C / SIGTERM)."),
    api_key: str = typer.Option(None, "--api-key", envvar="SUNTOOL_API_KEY", help="With --run: require this key."),
    start_timeout: float = typer.Option(900.0, "--start-timeout", min=1, help="With --run: seconds to get healthy."),
) -> None:
    """Write a vLLM prefill/decode deployment of the artifacts (and with --run, start it)."""
    from suntool.deploy.files import write_plan
    from suntool.deploy.plan import DeployConfig, make_plan
    from suntool.serve import SERVE_PACKAGES, require

    config = DeployConfig(
        artifacts=tuple(artifacts), out=out, names=tuple(names) if names else None, connector=connector,
        decode_instances=decode_instances, prefill_instances=prefill_instances, share=not dedicated, lora=lora,
        dtype=dtype, device=device, host=host, router_port=port, base_port=base_port, vllm_python=vllm_python,
        kv_dir=kv_dir, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, enforce_eager=enforce_eager,
        vllm_args=tuple(vllm_args or ()), allow_mismatch=allow_mismatch, cpu_bind=cpu_bind,
    )
    plan = make_plan(config)
    written = write_plan(plan, out, force=force)
    console.print(f"wrote {written}  {plan.mode} · {'shared' if plan.share else 'dedicated'} · "
                  f"connector {plan.connector} · {len(plan.instances)} vLLM instance(s)", markup=False)
    for inst in plan.instances:
        serves = ", ".join(n for n, _ in inst.lora_modules) or inst.served_name
        cores = f"  cores {inst.cpu_cores}" if inst.cpu_cores else ""
        console.print(f"  {inst.name:<18} {inst.half:<7} :{inst.port}  {serves}{cores}", markup=False)
    for note in plan.notes:
        err_console.print(f"[yellow]note:[/] {note}")
    if run:
        require(SERVE_PACKAGES, "suntool deploy --run")
        _run(written, api_key, start_timeout)
    else:
        console.print(f"start it with: suntool deploy run {written}", markup=False)


@deploy_app.command("run")
def run_command(
    plan_dir: Path = typer.Argument(..., help="A plan written by `suntool deploy vllm`."),
    api_key: str = typer.Option(None, "--api-key", envvar="SUNTOOL_API_KEY", help="Require this key on /v1/*."),
    start_timeout: float = typer.Option(900.0, "--start-timeout", min=1, help="Seconds to get healthy."),
) -> None:
    """Start a written plan: every vLLM instance, then the router; Ctrl-C / SIGTERM stops all."""
    _run(plan_dir, api_key, start_timeout)


@deploy_app.command("router")
def router_command(
    plan_dir: Path = typer.Argument(..., help="A plan written by `suntool deploy vllm`."),
    host: str = typer.Option(None, "--host", help="Address (default: the plan's)."),
    port: int = typer.Option(None, "--port", min=0, max=65535, help="Port (default: the plan's)."),
    api_key: str = typer.Option(None, "--api-key", envvar="SUNTOOL_API_KEY", help="Require this key on /v1/*."),
) -> None:
    """Serve only the router of a plan whose instances run elsewhere (scripts, containers)."""
    from suntool.deploy.plan import read_plan
    from suntool.deploy.router import serve_router

    plan = read_plan(plan_dir)
    serve_router(plan, host=host or plan.host, port=plan.router_port if port is None else port, api_key=api_key,
                 on_ready=lambda url: console.print(f"suntool deploy router: {url}/v1", markup=False))


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
