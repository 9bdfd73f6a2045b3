"""`suntool serve --local ART...`: an OpenAI-compatible server with a shared decode pool."""

from __future__ import annotations

import typer

from suntool.commands._ui import console, err_console, quiet_transformers


def serve_command(
    artifacts: list[str] = typer.Argument(..., help="Artifact directories to serve, one task model each."),
    local: bool = typer.Option(False, "--local", help="Serve the given artifacts in this process (required)."),
    names: list[str] = typer.Option(None, "--name", help="API model name per artifact, in order (default: dir name)."),
    decode_workers: int = typer.Option(1, "--decode-workers", min=1, help="Decode workers (threads) in the pool."),
    no_share: bool = typer.Option(
        False, "--no-share", help="Baseline: a dedicated prefill and decoder per model, no cross-model batching."
    ),
    mode: str = typer.Option(None, "--mode", help="sun | prefillshare (default: the artifacts' own mode)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you say otherwise)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: a free one)."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="SUNTOOL_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."
    ),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting requests before answering 429."),
    kv_blocks: int = typer.Option(None, "--kv-blocks", min=1, help="KV cache blocks (default: up to 1 GiB)."),
    block_size: int = typer.Option(16, "--block-size", min=1, help="Tokens per KV block."),
    max_model_len: int = typer.Option(None, "--max-model-len", min=2, help="Context length (default: the model's)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Sequences per decode forward."),
    max_prefill_tokens: int = typer.Option(
        512, "--max-prefill-tokens", min=1, help="Prompt tokens per prefill forward (longer prompts are chunked)."
    ),
    no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="Do not reuse prompt K/V blocks."),
    no_mixed_steps: bool = typer.Option(
        False, "--no-mixed-steps",
        help="Run prompts on a prefill thread per prefill half (default: on the decode worker's thread, inside "
             "the decode forward where the prefill half is the decode half, as vLLM's chunked prefill does).",
    ),
    dtype: str = typer.Option(
        None, "--dtype", help="float32|bfloat16|float16 (CPU default: bf16 if it has bf16 matmul, else fp32)."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device for the models and the KV pool."),
    torch_threads: int = typer.Option(None, "--torch-threads", min=1, help="Intra-op threads per busy engine thread."),
    drain_timeout: float = typer.Option(60.0, "--drain-timeout", min=0, help="Seconds SIGTERM waits for requests."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Serve task halves with a shared half they were not trained against."
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve artifacts over an OpenAI-compatible API with a shared decode pool."""
    from suntool.errors import SuntoolError
    from suntool.serve import SERVE_PACKAGES, require

    require(SERVE_PACKAGES, "suntool serve")
    from suntool.serve.app import ServeConfig, run_server
    from suntool.serve.engine import EngineConfig

    if not local:
        raise SuntoolError("pass --local to serve artifacts in this process: suntool serve --local ART...")
    engine = EngineConfig(
        decode_workers=decode_workers, share=not no_share, mode=mode, kv_blocks=kv_blocks, block_size=block_size,
        max_model_len=max_model_len, max_queue=max_queue, max_batch=max_batch, prefix_cache=not no_prefix_cache,
        max_prefill_tokens=max_prefill_tokens, mixed_steps=not no_mixed_steps,
        dtype=dtype, device=device, allow_mismatch=allow_mismatch, torch_threads=torch_threads,
    )
    engine.validate()
    config = ServeConfig(
        artifacts=tuple(artifacts), engine=engine, names=tuple(names) if names else None, host=host, port=port,
        api_key=api_key, drain_timeout=drain_timeout, log_level=log_level,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone reaching it can use it")

    def ready(url: str, engine) -> None:
        layout = "shared" if engine.share else "dedicated (--no-share)"
        console.print(
            f"suntool serve: {len(engine.models)} model(s) {', '.join(engine.models)} · {engine.mode} · "
            f"{layout} · {len(engine.decode_workers)} decode worker(s) · "
            f"{engine.allocator.capacity} KV blocks of {engine.config.block_size}"
        )
        console.print(f"suntool serve: {engine.describe()}", markup=False)
        console.print(f"suntool serve: listening on {url}", markup=False)
        console.file.flush()

    quiet_transformers()
    run_server(config, progress=lambda message: err_console.print(f"[dim]·[/] {message}"), on_ready=ready)
    console.print("suntool serve: stopped")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
