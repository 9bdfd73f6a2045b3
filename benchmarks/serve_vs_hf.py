"""suntool's engine vs a Hugging Face `generate` loop on the same batch: tokens/s ratio, one run.

Both generate `--new-tokens` tokens (EOS ignored) for `--batch` prompts of about
`--prompt-words` words, greedy, fp32, with the same torch intra-op threads; timed from the
first prompt in to the last token out (prefill included). The engine runs the artifact's
prefill half and its paged decode pool (one decode worker); `generate` runs the decode half
on the left-padded batch. Repeats alternate the two and the medians are compared.

    .venv/bin/python benchmarks/serve_vs_hf.py ART --batch 16 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path

from suntool.bench.workload import WORDS  # common words, mostly one token each


def engine_run(engine, name: str, prompts: list[list[int]], new_tokens: int) -> float:
    from suntool.serve.sequence import SamplingParams

    done, remaining, lock = threading.Event(), [len(prompts)], threading.Lock()

    def sink(event):
        if event.finish_reason is not None:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for ids in prompts:
        engine.submit(name, ids, params, sink)
    assert done.wait(3600)
    return time.perf_counter() - start


def hf_run(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> float:
    import torch

    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == width + new_tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", default="runs/serve_vs_hf.json")
    args = parser.parse_args()

    import torch

    from suntool.artifact import load_artifact
    from suntool.serve.engine import Engine, EngineConfig

    torch.set_num_threads(args.torch_threads)
    engine = Engine.from_artifacts([args.artifact], names=["m"],
                                   config=EngineConfig(decode_workers=1, torch_threads=args.torch_threads,
                                                       max_batch=args.batch))
    loaded = load_artifact(args.artifact, dtype="float32")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(args.prompt_words)) for _ in range(args.batch)]
    prompts = [engine.models["m"].encode(t, add_special_tokens=True) for t in texts]
    tokens = args.batch * args.new_tokens
    engine_run(engine, "m", prompts[:2], 4)  # warm-up both paths
    hf_run(loaded.decode_model, loaded.tokenizer, prompts[:2], 4)
    timings: dict[str, list[float]] = {"engine": [], "hf_generate": []}
    for _ in range(args.repeats):
        timings["engine"].append(engine_run(engine, "m", prompts, args.new_tokens))
        timings["hf_generate"].append(hf_run(loaded.decode_model, loaded.tokenizer, prompts, args.new_tokens))
    engine.close()
    rates = {k: tokens / statistics.median(v) for k, v in timings.items()}
    result = {"batch": args.batch, "new_tokens": args.new_tokens, "prompt_tokens": [len(p) for p in prompts],
              "torch_threads": args.torch_threads, "seconds": timings, "tokens_per_s": rates,
              "ratio_engine_over_hf": rates["engine"] / rates["hf_generate"]}
    print(f"engine      {rates['engine']:7.1f} tok/s  (median of {args.repeats}: {timings['engine']})")
    print(f"hf generate {rates['hf_generate']:7.1f} tok/s  (median of {args.repeats}: {timings['hf_generate']})")
    print(f"ratio engine / generate: {result['ratio_engine_over_hf']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
