"""The QSUN experiment: SUN accuracy with a full-precision decode half, with a 4-bit one, and after recovery.

    .venv/bin/python examples/qsun_experiment.py [--task arith --task program --task funcall] [--seeds 3] \\
        [--group-size 64] [--quantize-lm-head] [--work runs/sun_vs_baselines] [--qwork runs/qsun] \\
        [the options of sun_vs_baselines.py: --steps, --test, --val, ...]

It builds on `examples/sun_vs_baselines.py` (same base artifact, data, hyperparameters, seeds and
scorer; run that first, or let this script train the `sun` runs itself). Per task and seed:

    sun (fp decode)         the SUN prefill half with the shared full-precision (fp32) decode half
    sun + 4-bit decode      the same prefill half served on the decode half quantized by
                            `suntool quantize` (GPTQ, 4-bit): no recovery, a mismatched pair
    qsun (recovered)        `suntool finetune --method sun` on the quantized artifact with the same
                            seed: the prefill half trained against the 4-bit decode half

Resumable: the quantized base, each training run and each evaluation are kept and skipped when
present. Evaluations go to `<qwork>/<task>/eval-*.json`; the summary (`examples/experiment_report.py`:
accuracy mean and 95 % interval over seeds, paired bootstrap differences 4-bit − fp and qsun − fp
on the same test records, loss curves) to `<qwork>/summary.md`, `results.json`, `loss_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sun_vs_baselines as experiment  # noqa: E402

FP, FOUR_BIT, RECOVERED = "sun (fp decode)", "sun + 4-bit decode", "qsun (recovered)"
COMPARISONS = ((FOUR_BIT, FP), (RECOVERED, FP), (RECOVERED, FOUR_BIT))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qwork", type=Path, default=Path("runs/qsun"))
    parser.add_argument("--group-size", type=int, default=64, help="GPTQ group (128 does not divide SmolLM2's 576)")
    parser.add_argument("--quantize-lm-head", action="store_true", help="quantize the decode half's lm_head too")
    known, rest = parser.parse_known_args(argv)
    args = experiment.parse(rest)
    args.qwork, args.group_size, args.quantize_lm_head = known.qwork, known.group_size, known.quantize_lm_head
    return args


def quantized_base(base: Path, out: Path, group_size: int, lm_head: bool = False) -> Path:
    from suntool.quantize import QuantizeArtifactConfig, quantize_artifact

    if not (out / "suntool.json").is_file():
        print(f"quantizing the shared decode half of {base} -> {out}", flush=True)
        quantize_artifact(QuantizeArtifactConfig(artifact=base, out=out, bits=4, group_size=group_size,
                                                 quantize_lm_head=lm_head))
    return out


def with_decode_half(prefill_artifact: Path, decode_artifact: Path):
    """The prefill half of one artifact served with the decode half of another (a deliberate mismatch)."""
    from suntool.artifact import LoadedArtifact, load_artifact

    task, shared = load_artifact(prefill_artifact), load_artifact(decode_artifact, allow_mismatch=True)
    return LoadedArtifact(ref=task.ref, prefill_model=task.prefill_model, decode_model=shared.decode_model,
                          tokenizer=task.tokenizer)


def copied_eval(source: dict, target: Path, variant: str) -> None:
    """Keep the main experiment's evaluation of the fp pairing under this experiment's name."""
    from suntool.atomic import atomic_write_text

    if not target.is_file():
        atomic_write_text(target, json.dumps({**source, "variant": variant}, indent=2) + "\n")


def main(argv=None) -> int:
    import experiment_report

    from suntool.artifact import load_artifact
    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    args.work.mkdir(parents=True, exist_ok=True)
    bases = experiment.prepare_bases(args.model, args.work)
    name = "base-4bit-lmhead" if args.quantize_lm_head else "base-4bit"
    qbase = quantized_base(bases["sun"], args.qwork / name, args.group_size, args.quantize_lm_head)
    for task in args.task or list(experiment.DEFAULT_TASKS):
        dir_name = experiment.task_dir_name(task, args.difficulty)
        task_dir, qtask_dir = args.work / dir_name, args.qwork / dir_name
        train, _test_path, test, val = experiment.prepare_data(task, task_dir, args.train, args.test, args.val,
                                                               args.difficulty)
        for seed in range(args.seeds):
            sun = experiment.train_variant("sun", task_dir, bases, train, val, args, seed)
            fp = experiment.evaluate("sun", task, task_dir, bases, test, args, seed)
            copied_eval(fp, qtask_dir / f"eval-sun-fp-s{seed}.json", FP)
            experiment.cached_eval(qtask_dir / f"eval-sun-4bit-s{seed}.json", FOUR_BIT,
                                   lambda sun=sun: with_decode_half(sun, qbase), task, test, args, None, seed)
            qsun = experiment.train_variant("sun", qtask_dir, {"sun": qbase}, train, val, args, seed)
            experiment.cached_eval(qtask_dir / f"eval-qsun-s{seed}.json", RECOVERED,
                                   lambda qsun=qsun: load_artifact(qsun), task, test, args, qsun, seed)
            experiment_report.write(args.qwork, COMPARISONS)
            print(f"  {dir_name}: seed {seed} done", flush=True)
    print((args.qwork / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
