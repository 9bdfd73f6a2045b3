"""The QSUN experiment: SUN accuracy with a full-precision decode half, with a 4-bit one, and after recovery.

    .venv/bin/python examples/qsun_experiment.py --task program [--task arith] \\
        [--steps 50] [--batch-size 8] [--group-size 64] [--work runs/sun_vs_baselines] [--qwork runs/qsun]

It builds on `examples/sun_vs_baselines.py` (same base artifact, data, hyperparameters and
scorer; run that first, or let this script train the `sun` variant itself):

    sun (fp decode)         the SUN prefill half with the shared full-precision decode half
    sun + 4-bit decode      the same prefill half served on the decode half quantized by
                            `suntool quantize` (GPTQ, 4-bit): no recovery, a mismatched pair
    qsun                    `suntool finetune --method sun` on the quantized artifact: the
                            prefill half trained against the 4-bit decode half (recovery)

Resumable: the quantized base, each training run and each evaluation are kept and skipped
when present. Results go to `<qwork>/results.json` and `<qwork>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sun_vs_baselines as experiment  # noqa: E402


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", help="task of suntool.evals.tasks (repeatable; default program)")
    parser.add_argument("--qwork", type=Path, default=Path("runs/qsun"))
    parser.add_argument("--group-size", type=int, default=64, help="GPTQ group (128 does not divide SmolLM2's 576)")
    known, rest = parser.parse_known_args(argv)
    args = experiment.parse(rest)
    args.task, args.qwork, args.group_size = known.task, known.qwork, known.group_size
    return args


def quantized_base(base: Path, out: Path, group_size: int) -> Path:
    from suntool.quantize import QuantizeArtifactConfig, quantize_artifact

    if not (out / "suntool.json").is_file():
        print(f"quantizing the shared decode half of {base} -> {out}", flush=True)
        quantize_artifact(QuantizeArtifactConfig(artifact=base, out=out, bits=4, group_size=group_size))
    return out


def with_decode_half(prefill_artifact: Path, decode_artifact: Path):
    """The prefill half of one artifact served with the decode half of another (a deliberate mismatch)."""
    from suntool.artifact import LoadedArtifact, load_artifact

    task, shared = load_artifact(prefill_artifact), load_artifact(decode_artifact, allow_mismatch=True)
    return LoadedArtifact(ref=task.ref, prefill_model=task.prefill_model, decode_model=shared.decode_model,
                          tokenizer=task.tokenizer)


def main(argv=None) -> int:
    from suntool.artifact import load_artifact
    from suntool.atomic import atomic_write_text
    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    args.work.mkdir(parents=True, exist_ok=True)
    bases = experiment.prepare_bases(args.model, args.work)
    qbase = quantized_base(bases["sun"], args.qwork / "base-4bit", args.group_size)
    results = []
    for task in args.task or ["program"]:
        task_dir, qtask_dir = args.work / task, args.qwork / task
        train, test_path, test = experiment.prepare_data(task, task_dir, args.train, args.test)
        sun = experiment.train_variant("sun", task_dir, bases, train, test_path, args)
        qsun = experiment.train_variant("sun", qtask_dir, {"sun": qbase}, train, test_path, args)
        results += [
            experiment.evaluate("sun", task, task_dir, bases, test, args) | {"variant": "sun (fp decode)"},
            experiment.cached_eval(qtask_dir / "eval-sun-4bit-decode.json", "sun + 4-bit decode, no recovery",
                                   lambda sun=sun: with_decode_half(sun, qbase), task, test, args, None),
            experiment.cached_eval(qtask_dir / "eval-qsun.json", "qsun (recovered)",
                                   lambda qsun=qsun: load_artifact(qsun), task, test, args, qsun),
        ]
        for result in results[-3:]:
            print(f"  {task}: {result['variant']:34s} accuracy {result['accuracy']:.3f}", flush=True)
    atomic_write_text(args.qwork / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.qwork / "results.md", experiment.table(results))
    print(experiment.table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
