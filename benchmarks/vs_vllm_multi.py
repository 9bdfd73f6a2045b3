"""Four task models: suntool's shared decode pool (SUN-LoRA) vs vLLM multi-LoRA vs four dedicated vLLM instances.

    python benchmarks/vs_vllm_multi.py [--vllm-python .venv-vllm/bin/python] [--model smollm2-135m] \\
        [--steps 30] [--rate 1 --rate 2 --rate inf] [-n 32] [--output-len 32] [--dtype auto] \\
        [--layout suntool --layout vllm-lora --layout vllm-instances] [--work runs/vs-vllm-multi/work] \\
        [--out runs/vs-vllm-multi] [--prepare-only]

Issue 12, target 2. The same planned requests (Zipf alpha = 1 over the four models in the order
of `TASK_MODELS`, prompts from each model's synthetic task, `--output-len` tokens with
`ignore_eos`, Poisson arrivals per `--rate`, same seed) go to three layouts serving the same
four task models, each measured by `suntool.bench` on the client:

    suntool         `suntool serve --local` of four SUN-LoRA artifacts (prefill LoRA adapters trained
                    against one frozen decode half): one shared decode pool (`--decode-workers`)
    vllm-lora       one vLLM instance, `--enable-lora --lora-modules NAME=DIR ...`: the four tasks
                    trained as full-model LoRA adapters (the conventional way), plain PEFT dirs
    vllm-instances  four vLLM instances, one per fully fine-tuned model (plain HF dirs); the bench
                    client sends each model's requests to its own instance (`BenchConfig.model_urls`)

and it prints suntool / vLLM ratios per rate (output tok/s, TPOT p50, TTFT p50; suntool's TPOT
against the best vLLM layout's) next to the issue's targets (>= 1.3x multi-LoRA, >= 2.0x the
instances, TPOT within 10 %), and writes `compare.json` (+ each layout's bench.json/PNG) under
`--out`. If vLLM cannot start or serve a layout (e.g. its CPU build refusing LoRA), that
layout's record holds vLLM's exact error (the end of its log) and the others still run.

Inputs are prepared reproducibly under `--work` and reused on a re-run (each step is skipped when
its output exists): `suntool split MODEL --mode sun --dtype float32`, then per task model three
short `suntool finetune` runs on its task's bundled train split (throughput does not depend on
quality: `--steps` a few dozen): `--method sun --lora R` (suntool's layout), `--method full
--lora R` and `--method full`; then `export/` holds what vLLM loads: `export/base` (the base
weights, a plain HF dir), `export/lora/NAME` (the PEFT adapter, its base path pointed at
`export/base`) and `export/full/NAME` (the full fine-tune, a plain HF dir), hardlinked where
possible. Every vLLM server gets `--max-model-len`, `VLLM_CPU_KVCACHE_SPACE=--kv-cache-gib`
(default 1 GiB) and `--enforce-eager` (default on; `--no-enforce-eager` to compile), so four
instances fit in memory at once (~4.2 GiB each; `--vllm-env VLLM_ENABLE_V1_MULTIPROCESSING=0`: ~3.3);
they start one after the other and a start that would not fit is refused (`vllm_harness.running`).
`--cpu-bind auto` (default) binds the instances' OpenMP threads to their own cores (one core each,
round robin, when there are more instances than cores): vLLM's OpenMP workers spin-wait, and
instances on the same cores (vLLM's default) slow each other down badly.
Both engines run in `--dtype` (auto: the CPU's best, printed with its flags). Not a test; the
preparation takes a while on a CPU, each vLLM start ~2-4 min.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import vllm_harness

# (served name, task of suntool.evals.tasks whose bundled train split it is trained on, which slice of it).
# The order matters: the bench's "tasks" dataset gives model i the prompts of TASKS[i % 3] (arith, program,
# funcall, arith), and Zipf popularity ranks the models in this order.
TASK_MODELS = (("arith", "arith", 0), ("program", "program", 0), ("funcall", "funcall", 0), ("arith-b", "arith", 1))
VARIANTS = {  # variant -> suntool finetune flags
    "sun-lora": ("--method", "sun", "--lora"),
    "full-lora": ("--method", "full", "--lora"),
    "full": ("--method", "full"),
}
LAYOUTS = ("suntool", "vllm-lora", "vllm-instances")
TARGETS = {"vllm-lora": 1.3, "vllm-instances": 2.0}  # issue 12: suntool's output tok/s over each layout's


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default=vllm_harness.DEFAULT_VLLM_PYTHON)
    parser.add_argument("--model", default="smollm2-135m", help="base HF checkpoint dir or built-in name")
    parser.add_argument("--work", type=Path, default=Path("runs/vs-vllm-multi/work"), help="prepared inputs")
    parser.add_argument("--out", type=Path, default=Path("runs/vs-vllm-multi"))
    parser.add_argument("--layout", action="append", choices=LAYOUTS, help="layouts to run (default: all three)")
    parser.add_argument("--prepare-only", action="store_true", help="train and export, serve nothing")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each fine-tune")
    parser.add_argument("--train", type=int, default=200, help="training records per task model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--rate", action="append", default=None, help="requests/s or inf (default 1, 2, inf)")
    parser.add_argument("-n", "--num-requests", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="both engines' dtype; auto: the CPU's best")
    parser.add_argument("--decode-workers", type=int, default=1, help="suntool's shared decode workers")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=float, default=1,
                        help="GiB of KV cache per vLLM server (VLLM_CPU_KVCACHE_SPACE; fractions too)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cpu-bind", choices=("auto", "none"), default="auto",
                        help="auto: each of the four instances gets its own share of the cores; none: vLLM's default")
    parser.add_argument("--vllm-arg", action="append", default=[], help="extra flag for every vLLM server")
    parser.add_argument("--vllm-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment variable for every vLLM server")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `suntool serve` flag")
    parser.add_argument("--start-timeout", type=float, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _suntool(*args: str) -> None:
    command = [sys.executable, "-m", "suntool", *args]
    print("$ suntool " + " ".join(args), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "COLUMNS": "160"})


def _link_tree(source: Path, dest: Path) -> None:
    """A copy of `source` at `dest` (files hardlinked where possible), written atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source.resolve(), tmp, copy_function=link)
    tmp.rename(dest)


def _half_dir(artifact: Path, half: str) -> Path:
    from suntool.manifest import read_manifest

    return read_manifest(artifact).half(half).resolve(artifact)


def _check_hf_dir(path: Path) -> None:
    missing = [name for name in ("config.json", "tokenizer.json") if not (path / name).is_file()]
    if missing or not list(path.glob("*.safetensors")):
        raise SystemExit(f"{path}: not a plain HF checkpoint (missing {missing or '*.safetensors'})")


def prepare(args) -> dict:
    """Split, fine-tune and export (each step skipped when done); returns the paths every layout serves."""
    from suntool.atomic import atomic_write_text
    from suntool.evals.tasks import load_bundled, to_jsonl

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base-sun"
    if not (base / "suntool.json").is_file():
        _suntool("split", args.model, "-o", str(base), "--mode", "sun", "--dtype", "float32", "--force")
    for name, task, part in TASK_MODELS:
        data = work / "data" / f"{name}.jsonl"
        if not data.is_file():
            records = load_bundled(task, "train")[part * args.train:(part + 1) * args.train]
            if len(records) < args.batch_size:
                raise SystemExit(f"task {task} has too few training records for slice {part} of {args.train}")
            data.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(data, to_jsonl(records))
        for variant, flags in VARIANTS.items():
            out = work / name / variant
            if (out / "suntool.json").is_file():
                continue
            rank = (str(args.lora_rank),) if flags[-1] == "--lora" else ()
            lr = "2e-3" if rank else "2e-4"
            _suntool("finetune", str(base), "--data", str(data), "-o", str(out), *flags, *rank,
                     "--steps", str(args.steps), "--lr", lr, "--batch-size", str(args.batch_size),
                     "--max-length", str(args.max_length), "--truncate", "--seed", str(args.seed),
                     "--device", "cpu", "--save-every", str(max(1, args.steps // 2)), "--resume")
    export = work / "export"
    export_base = export / "base"
    if not export_base.is_dir():
        export.mkdir(parents=True, exist_ok=True)
        _link_tree(_half_dir(base, "prefill"), export_base)  # the base weights every adapter was trained on
    _check_hf_dir(export_base)
    paths = {"sun_lora": [], "lora": [], "full": [], "base": str(export_base.resolve())}
    for name, _, _ in TASK_MODELS:
        paths["sun_lora"].append(str(work / name / "sun-lora"))
        lora, full = export / "lora" / name, export / "full" / name
        if not lora.is_dir():
            lora.parent.mkdir(parents=True, exist_ok=True)
            adapter = work / name / "full-lora" / "model-adapter"
            if not (adapter / "adapter_config.json").is_file():
                raise SystemExit(f"{adapter}: no PEFT adapter (was {work / name / 'full-lora'} trained with --lora?)")
            tmp = lora.with_name(lora.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(adapter, tmp)
            config = json.loads((tmp / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = str(export_base.resolve())
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            tmp.rename(lora)
        if not full.is_dir():
            full.parent.mkdir(parents=True, exist_ok=True)
            _link_tree(_half_dir(work / name / "full", "prefill"), full)  # monolithic: prefill == decode == model/
        _check_hf_dir(full)
        paths["lora"].append(str(lora.resolve()))
        paths["full"].append(str(full.resolve()))
    return paths


def _env_pairs(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--vllm-env wants KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _bench(config, say=print) -> tuple[dict | None, str | None]:
    """run_bench, or (None, the error) when the server refuses the load."""
    from suntool.bench.runner import run_bench
    from suntool.errors import SuntoolError

    try:
        return run_bench(config, say=say), None
    except SuntoolError as err:
        return None, str(err)


def run_layouts(args, paths: dict, dtype: str) -> dict:
    from suntool.bench.runner import BenchConfig
    from suntool.bench.workload import WorkloadSpec

    names = tuple(name for name, _, _ in TASK_MODELS)
    rates = tuple(math.inf if r.lower() == "inf" else float(r) for r in (args.rate or ["1", "2", "inf"]))
    spec = WorkloadSpec.parse("zipf:1.0", dataset="tasks", output_len=args.output_len, seed=args.seed)
    common = {"rates": rates, "num_requests": args.num_requests, "workload": spec, "models": names}
    vllm_common = {"python": args.vllm_python, "dtype": dtype, "max_model_len": args.max_model_len,
                   "kv_cache_gib": args.kv_cache_gib, "enforce_eager": args.enforce_eager,
                   "extra_args": tuple(args.vllm_arg), "extra_env": _env_pairs(args.vllm_env)}
    results: dict[str, dict] = {}
    for layout in args.layout or LAYOUTS:
        print(f"\n=== {layout} ===", flush=True)
        out = args.out / layout
        if layout == "suntool":
            serve_args = (*(f"--name={name}" for name in names), "--dtype", dtype, *args.serve_arg)
            result, error = _bench(BenchConfig(artifacts=tuple(paths["sun_lora"]), serve_args=serve_args,
                                               decode_workers=args.decode_workers, out=out, **common))
        else:
            if layout == "vllm-lora":
                launches = [vllm_harness.VllmLaunch(
                    model=paths["base"], served_name="base", lora_modules=tuple(zip(names, paths["lora"], strict=True)),
                    max_lora_rank=args.lora_rank, **vllm_common)]
            else:
                cores = vllm_harness.core_shares(len(names)) if args.cpu_bind == "auto" else [None] * len(names)
                launches = [vllm_harness.VllmLaunch(model=path, served_name=name, cpu_cores=share, **vllm_common)
                            for name, path, share in zip(names, paths["full"], cores, strict=True)]
            try:
                with vllm_harness.running(launches, out, timeout=args.start_timeout) as servers:
                    if layout == "vllm-lora":
                        config = BenchConfig(url=servers[0].url, out=out, **common)
                    else:
                        config = BenchConfig(model_urls=tuple((s.launch.served_name, s.url) for s in servers),
                                             out=out, **common)
                    result, error = _bench(config)
                    if error:
                        error += "\n" + "\n".join(s.log_tail(15) for s in servers)
            except vllm_harness.VllmStartError as err:
                result, error = None, str(err)
        if error:
            print(f"{layout} FAILED: {error}", flush=True)
        results[layout] = {"runs": result["runs"] if result else [], "error": error,
                           "json": str(result["json"]) if result else None}
    return results


def ratios(results: dict) -> list[dict]:
    """Per rate: suntool / each vLLM layout (output tok/s, TPOT p50, TTFT p50), TPOT vs the best vLLM layout."""
    from suntool.bench.report import compare_ratios

    ours = {run.rate: run for run in results.get("suntool", {}).get("runs", [])}
    rows = []
    for rate, mine in ours.items():
        row = {"rate": rate}
        best_tpot = math.inf
        for layout in ("vllm-lora", "vllm-instances"):
            theirs = {run.rate: run for run in results.get(layout, {}).get("runs", [])}.get(rate)
            if theirs is None:
                continue
            c = compare_ratios(mine, theirs)
            row[layout] = {k: c[k] for k in ("output_token_throughput", "tpot_p50", "ttft_p50", "e2e_p99")}
            if not math.isnan(theirs.tpot["p50"]):
                best_tpot = min(best_tpot, theirs.tpot["p50"])
        row["tpot_p50_over_best_vllm"] = mine.tpot["p50"] / best_tpot if math.isfinite(best_tpot) else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("\n(no ratios: they need the suntool layout and at least one vLLM layout in the same run)")
        return
    print("\nsuntool (SUN-LoRA, shared decode) / vLLM: throughput > 1 = suntool faster, latency < 1 = sooner")
    print("| rate | vs | output tok/s (target) | TPOT p50 | TTFT p50 | e2e p99 |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        for layout, target in TARGETS.items():
            if layout in row:
                c = row[layout]
                print(f"| {row['rate']:g} | {layout} | ×{c['output_token_throughput']:.2f} (≥ {target}) "
                      f"| ×{c['tpot_p50']:.2f} | ×{c['ttft_p50']:.2f} | ×{c['e2e_p99']:.2f} |")
        if row["tpot_p50_over_best_vllm"] is not None:
            print(f"| {row['rate']:g} | TPOT p50 / best vLLM | ×{row['tpot_p50_over_best_vllm']:.2f} (≤ 1.10) | | | |")


def main(argv=None) -> int:
    from dataclasses import asdict

    from suntool.bench.report import format_run
    from suntool.models import resolve_model

    args = parse(argv)
    flags = vllm_harness.cpu_flags()
    dtype = vllm_harness.resolve_dtype(args.dtype, flags)
    cpu = vllm_harness.cpu_summary(flags)
    print(f"{cpu} -> both engines in {dtype}", flush=True)
    args.model = str(resolve_model(args.model))
    paths = prepare(args)
    print("prepared:", json.dumps(paths, indent=2), flush=True)
    if args.prepare_only:
        return 0
    if set(args.layout or LAYOUTS) - {"suntool"}:
        vllm_harness.check_vllm_python(args.vllm_python)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_layouts(args, paths, dtype)
    rows = ratios(results)
    print()
    for layout, result in results.items():
        for run in result["runs"]:
            print(f"{layout:>15} {format_run(run)}")
        if result["error"]:
            print(f"{layout:>15} error: {result['error'].splitlines()[0]}")
    print(f"\n{cpu}; dtype {dtype}; {args.num_requests} requests x {args.output_len} tokens per rate, zipf:1.0, "
          f"4 task models; vLLM: enforce_eager={args.enforce_eager}, KV {args.kv_cache_gib} GiB each")
    print_table(rows)
    record = {
        "cpu": cpu, "cpu_flags": sorted(flags), "dtype": dtype, "models": [list(m) for m in TASK_MODELS],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prepared": paths,
        "layouts": {layout: {"error": r["error"], "json": r["json"], "runs": [asdict(run) for run in r["runs"]]}
                    for layout, r in results.items()},
        "suntool_over_vllm": rows,
        "targets": {"output_token_throughput": TARGETS, "tpot_p50_over_best_vllm": 1.10},
    }
    from suntool.bench.report import _clean

    (args.out / "compare.json").write_text(json.dumps(_clean(record), indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
