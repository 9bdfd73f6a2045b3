"""Offline evaluation for suntool: synthetic task generators, their scorers, and lm-eval tasks.

Installed as `suntool.evals`. Pure Python at import time (no torch, no lm_eval):

- `arith`, `program`, `funcall`: generation tasks (word problems, list expressions checked by
  sandboxed execution, JSON function calls); `arith_mc`, `facts_mc`: multiple-choice tasks.
- `tasks`: the `SyntheticTask` registry, JSONL splits, accuracy, chat rendering, bundled data.
- `registry`: the bundled lm-eval tasks (`evals/lm_eval_tasks/*.yaml`) and a `TaskManager`.
- `data/<task>/{train,test}.jsonl`: shipped splits, byte-equal to what the generators write.
"""
