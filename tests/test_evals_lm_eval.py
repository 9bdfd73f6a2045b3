"""The bundled lm-eval tasks: found and built offline by a TaskManager, scored by our scorers (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from suntool.evals import registry
from suntool.evals.tasks import ALL_TASKS, BUNDLED, TASKS

pytest.importorskip("lm_eval")

GENERATE = {f"suntool_{name}" for name in TASKS}
CHOICE = {"suntool_arith_mc", "suntool_facts_mc"}
BENCHMARKS = {"humaneval", "bfcl_simple", "bfcl_multiple", "bfcl_parallel", "bfcl_parallel_multiple"}  # real data


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))


def _yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506


def test_bundled_names_and_shipped_yamls():
    assert registry.bundled_task_names() == sorted(GENERATE | CHOICE | BENCHMARKS)
    group = _yaml(registry.TASKS_DIR / "suntool.yaml")
    assert group["group"] == registry.GROUP and sorted(group["task"]) == sorted(GENERATE | CHOICE)
    for name in sorted(GENERATE | CHOICE):
        cfg = _yaml(registry.TASKS_DIR / f"{name}.yaml")
        short = name.removeprefix("suntool_")
        for split, path in cfg["dataset_kwargs"]["data_files"].items():
            shipped = registry.TASKS_DIR.parent / "data" / short / f"{split}.jsonl"
            assert (registry.TASKS_DIR / path).resolve() == shipped
        if name in GENERATE:  # stop strings and scorer hooks come from the task registry
            assert tuple(cfg["generation_kwargs"]["until"]) == ALL_TASKS[short].stop_strings
            hook = f"suntool.evals.lm_eval_utils.process_results_{short}"
            assert cfg["process_results"] == ("!function", hook)
            assert cfg["metric_list"] == [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
        else:
            assert cfg["output_type"] == "multiple_choice"
            assert {m["metric"] for m in cfg["metric_list"]} == {"acc", "acc_norm"}


def test_materialized_yamls_have_absolute_existing_paths(tmp_path):
    out = registry.materialize_tasks(tmp_path / "tasks")
    names = sorted(p.name for p in out.glob("*.yaml"))
    assert names == sorted(p.name for p in registry.TASKS_DIR.glob("*.yaml"))
    for path in out.glob("suntool_*.yaml"):
        cfg = _yaml(path)
        for file in cfg["dataset_kwargs"]["data_files"].values():
            assert Path(file).is_absolute() and Path(file).is_file()
        original = _yaml(registry.TASKS_DIR / path.name)
        assert {k: v for k, v in cfg.items() if k != "dataset_kwargs"} == {
            k: v for k, v in original.items() if k != "dataset_kwargs"
        }


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))  # relative paths would break here; ours are absolute
    try:
        manager = registry.task_manager(include_defaults=False)
        return manager, manager.load([registry.GROUP])
    finally:
        os.chdir(cwd)


def test_task_manager_finds_and_builds_every_task(loaded):
    manager, result = loaded
    assert set(manager.all_subtasks) == GENERATE | CHOICE | BENCHMARKS and registry.GROUP in manager.all_groups
    assert set(result["tasks"]) == GENERATE | CHOICE
    assert sorted(result["group_map"][registry.GROUP]) == sorted(GENERATE | CHOICE)
    for name, task in result["tasks"].items():
        assert len(task.eval_docs) == BUNDLED[name.removeprefix("suntool_")].n_test
        expected_type = "generate_until" if name in GENERATE else "multiple_choice"
        assert expected_type == task.OUTPUT_TYPE


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_process_results_scores_gold_one_and_wrong_zero(loaded, name):
    task = loaded[1]["tasks"][name]
    docs = list(task.eval_docs)[:8]
    for doc in docs:
        gold = task.doc_to_target(doc)
        assert task.process_results(doc, [gold]) == {"acc": 1.0}
        assert task.process_results(doc, ["I do not know."]) == {"acc": 0.0}
    assert task.aggregation()["acc"]([1.0, 0.0]) == 0.5 and task.higher_is_better()["acc"] is True
    context = task.fewshot_context(docs[0], num_fewshot=1)
    assert context.endswith(docs[0]["prompt"]) and context.count(docs[0]["prompt"].split("\n")[-1]) == 2


@pytest.mark.parametrize("name", sorted(CHOICE))
def test_choice_tasks_score_gold_with_loglikelihoods(loaded, name):
    task = loaded[1]["tasks"][name]
    doc = task.eval_docs[0]
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_target(doc)
    assert choices == doc["choices"] and gold == doc["label"]
    task.build_all_requests(limit=1)
    requests = [instance.args for instance in task.instances]
    assert requests == [(doc["prompt"], " " + choice) for choice in choices]
    best_gold = [(-1.0 if i == gold else -5.0, False) for i in range(len(choices))]
    best_other = [(-1.0 if i == (gold + 1) % 4 else -5.0, False) for i in range(len(choices))]
    assert task.process_results(doc, best_gold)["acc"] == 1.0
    assert task.process_results(doc, best_gold)["acc_norm"] == 1.0
    assert task.process_results(doc, best_other)["acc"] == 0.0


def test_simple_evaluate_end_to_end_with_an_oracle_lm(loaded):
    """lm-eval's full loop (requests, few-shot, filters, our hooks, group mean) with a fake LM, no model."""
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    from suntool.evals.tasks import load_bundled

    gold = {r["prompt"]: r for name in ALL_TASKS for r in load_bundled(name)}

    class Oracle(LM):
        def _record(self, context: str) -> dict:
            return next(r for prompt, r in gold.items() if context.endswith(prompt))

        def generate_until(self, requests):
            return [self._record(request.args[0])["completion"] for request in requests]

        def loglikelihood(self, requests):
            results = []
            for request in requests:
                record = self._record(request.args[0])
                right = request.args[1] == " " + record["choices"][record["label"]]
                results.append((-1.0 if right else -9.0, False))
            return results

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    out = simple_evaluate(
        model=Oracle(), tasks=[registry.GROUP], limit=3, num_fewshot=1, task_manager=loaded[0],
        random_seed=None, numpy_random_seed=None, torch_random_seed=None, log_samples=False,
    )  # fmt: skip
    results = out["results"]
    assert set(results) == GENERATE | CHOICE | {registry.GROUP}
    for name in GENERATE | CHOICE | {registry.GROUP}:
        assert results[name]["acc,none"] == 1.0, name
    for name in CHOICE:
        assert results[name]["acc_norm,none"] == 1.0
