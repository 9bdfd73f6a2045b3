"""`suntool deploy vllm` plans (no vLLM needed): instances, routes, K/V keys, files, flags and refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from suntool.cli import main
from suntool.deploy.files import kv_transfer_config, vllm_argv, write_plan
from suntool.deploy.plan import DeployConfig, DeployPlan, make_plan, read_plan
from suntool.errors import SuntoolError
from suntool.manifest import MANIFEST_NAME, read_manifest
from tests.test_serve_engine import make_task_artifacts


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory):
    """A stand-in for a vLLM venv's python (the plan only checks it exists and finds libiomp5.so beside it)."""
    venv = tmp_path_factory.mktemp("venv-vllm")
    (venv / "bin").mkdir()
    (venv / "lib").mkdir()
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    (venv / "lib" / "libiomp5.so").write_bytes(b"")
    return python


@pytest.fixture(scope="module")
def sun_arts(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-plan-sun")
    return make_task_artifacts(llama_dir, root, ["math", "code"])


@pytest.fixture(scope="module")
def ps_arts(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-plan-ps")
    return make_task_artifacts(llama_dir, root, ["math", "code"], mode="prefillshare")


def config(arts, out, python, **kw) -> DeployConfig:
    return DeployConfig(artifacts=tuple(str(a) for a in arts), out=out, vllm_python=str(python), **kw)


def test_sun_plan_task_prefills_one_shared_decode_pool(sun_arts, fake_python, tmp_path):
    plan = make_plan(config(sun_arts, tmp_path / "plan", fake_python, decode_instances=2))
    assert [(i.name, i.half, i.kv_role, i.port) for i in plan.instances] == [
        ("prefill-math", "prefill", "kv_producer", 8100), ("prefill-code", "prefill", "kv_producer", 8101),
        ("decode-0", "decode", "kv_consumer", 8102), ("decode-1", "decode", "kv_consumer", 8103)]
    manifests = [read_manifest(a) for a in sun_arts]
    assert plan.instance("prefill-math").model_dir == str((sun_arts[0] / "prefill").resolve())
    assert {plan.instance("decode-0").model_dir, plan.instance("decode-1").model_dir} == {
        str(Path(plan.instance("decode-0").model_dir))}
    math, code = plan.model("math"), plan.model("code")
    assert math.prefill_pool == ("prefill-math",) and code.prefill_pool == ("prefill-code",)
    assert math.decode_pool == code.decode_pool == ("decode-0", "decode-1")
    assert math.prefill_model == "prefill-math" and math.decode_model == "decode-0"
    # K/V keys name the prefill weights: different trained prefill halves, different keys
    assert math.kv_key == manifests[0].prefill.sha256.split(":")[1][:16] != code.kv_key
    assert plan.instance("prefill-math").kv_key == math.kv_key
    assert plan.mode == "sun" and plan.share


def test_prefillshare_plan_is_the_mirror(ps_arts, fake_python, tmp_path):
    plan = make_plan(config(ps_arts, tmp_path / "plan", fake_python, prefill_instances=2))
    assert [(i.name, i.kv_role) for i in plan.instances] == [
        ("prefill-0", "kv_producer"), ("prefill-1", "kv_producer"),
        ("decode-math", "kv_consumer"), ("decode-code", "kv_consumer")]
    math, code = plan.model("math"), plan.model("code")
    assert math.prefill_pool == code.prefill_pool == ("prefill-0", "prefill-1")
    assert math.decode_pool == ("decode-math",) and code.decode_pool == ("decode-code",)
    assert math.kv_key == code.kv_key  # one shared prefill half: its K/V is every task model's


def test_dedicated_baseline_gives_each_model_its_own_instances(sun_arts, fake_python, tmp_path):
    plan = make_plan(config(sun_arts, tmp_path / "plan", fake_python, share=False))
    assert [i.name for i in plan.instances] == ["prefill-math", "prefill-code", "decode-math", "decode-code"]
    assert plan.model("math").decode_pool == ("decode-math",) and not plan.share
    assert plan.instance("decode-math").model_dir.endswith("math/decode")  # the same weights, loaded twice
    assert plan.instance("decode-code").model_dir.endswith("code/decode")


def test_written_plan_files(sun_arts, fake_python, tmp_path):
    out = tmp_path / "plan"
    plan = make_plan(config(sun_arts, out, fake_python, dtype="float32", enforce_eager=True, max_model_len=512,
                            kv_cache_gib=1.5, vllm_args=("--seed", "3")))
    written = write_plan(plan, out)
    assert sorted(p.name for p in written.iterdir()) == [
        "README.md", "docker-compose.yaml", "instances", "kv", "plan.json", "router.sh", "suntool_kv_connector.py"]
    assert read_plan(written) == plan
    script = (written / "instances" / "prefill-math.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash")
    assert (written / "instances" / "prefill-math.sh").stat().st_mode & 0o111
    assert f"export PYTHONPATH={written}" in script
    assert "export VLLM_CPU_KVCACHE_SPACE=1.5" in script and "VLLM_CPU_NUM_OF_RESERVED_CPU=0" in script
    assert f"export LD_PRELOAD={fake_python.parent.parent / 'lib' / 'libiomp5.so'}" in script
    assert "-m vllm.entrypoints.openai.api_server" in script and "--enforce-eager" in script
    argv = vllm_argv(plan, plan.instance("prefill-math"))
    assert argv[argv.index("--port") + 1] == "8100" and argv[argv.index("--dtype") + 1] == "float32"
    assert argv[argv.index("--max-model-len") + 1] == "512" and argv[-2:] == ["--seed", "3"]
    transfer = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert transfer == {"kv_connector": "SuntoolKVConnector", "kv_connector_module_path": "suntool_kv_connector",
                        "kv_role": "kv_producer", "kv_connector_extra_config": {
                            "shared_storage_path": str(written / "kv"), "kv_key": plan.model("math").kv_key}}
    assert kv_transfer_config(plan, plan.instance("decode-0"))["kv_role"] == "kv_consumer"
    connector = (written / "suntool_kv_connector.py").read_text()
    assert "class SuntoolKVConnector(ExampleConnector)" in connector
    compose = yaml.safe_load((written / "docker-compose.yaml").read_text())
    assert set(compose["services"]) == {"prefill-math", "prefill-code", "decode-0", "router"}
    assert compose["services"]["decode-0"]["command"] == vllm_argv(plan, plan.instance("decode-0"))
    readme = (written / "README.md").read_text()
    assert "| math | prefill-math as `prefill-math` | decode-0 as `decode-0` |" in readme
    assert "suntool deploy run" in readme
    with pytest.raises(SuntoolError, match="already exists"):
        write_plan(plan, out)
    write_plan(plan, out, force=True)


def test_other_connectors(sun_arts, fake_python, tmp_path):
    plan = make_plan(config(sun_arts, tmp_path / "plan", fake_python, connector="nixl", device="cuda"))
    assert kv_transfer_config(plan, plan.instance("prefill-math")) == {"kv_connector": "NixlConnector",
                                                                       "kv_role": "kv_both"}
    written = write_plan(plan, tmp_path / "plan")
    assert "VLLM_CPU_KVCACHE_SPACE" not in (written / "instances" / "decode-0.sh").read_text()
    lm = make_plan(config(sun_arts, tmp_path / "p2", fake_python, connector="lmcache"))
    assert kv_transfer_config(lm, lm.instance("decode-0"))["kv_connector"] == "LMCacheConnectorV1"


def lora_artifacts(base: Path, root: Path, names: list[str]) -> list[Path]:
    """SUN-LoRA stand-ins: copies of `base` whose prefill entry names a PEFT adapter directory."""
    out = []
    for rank, name in zip((8, 16), names, strict=False):
        target = root / name
        shutil.copytree(base, target)
        adapter = target / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
        manifest = read_manifest(target)
        entry = replace(manifest.prefill, adapter="adapter")
        (target / MANIFEST_NAME).write_text(manifest.with_half("prefill", entry).to_json(), encoding="utf-8")
        out.append(target)
    return out


def test_lora_puts_every_adapter_on_one_prefill_instance(sun_arts, fake_python, tmp_path):
    base = sun_arts[0].parent / "base-sun"
    arts = lora_artifacts(base, tmp_path, ["math", "code"])
    plan = make_plan(config(arts, tmp_path / "plan", fake_python, lora=True))
    assert [i.name for i in plan.instances] == ["prefill-lora-0", "decode-0"]
    inst = plan.instance("prefill-lora-0")
    assert inst.lora_modules == (("math", str((arts[0] / "adapter").resolve())),
                                 ("code", str((arts[1] / "adapter").resolve())))
    argv = vllm_argv(plan, inst)
    assert argv[argv.index("--max-lora-rank") + 1] == "16" and "--enable-lora" in argv
    assert argv[argv.index("--lora-modules") + 1:argv.index("--lora-modules") + 3] == [
        f"math={arts[0] / 'adapter'}".replace(str(arts[0]), str(arts[0].resolve())),
        f"code={arts[1] / 'adapter'}".replace(str(arts[1]), str(arts[1].resolve()))]
    math, code = plan.model("math"), plan.model("code")
    assert (math.prefill_model, code.prefill_model) == ("math", "code")  # the adapter is the model at prefill
    assert math.kv_key != code.kv_key and math.kv_key.endswith("+math")
    separate = make_plan(config(arts, tmp_path / "plan2", fake_python))  # without --lora: one instance each
    assert [i.name for i in separate.instances] == ["prefill-math", "prefill-code", "decode-0"]


def test_qsun_decode_half_is_loaded_as_gptq(sun_arts, fake_python, tmp_path):
    arts = []
    for art in sun_arts:
        target = tmp_path / art.name
        shutil.copytree(art, target)
        manifest = read_manifest(target)
        entry = replace(manifest.decode, quantization={"quant_method": "gptq", "bits": 4, "group_size": 32})
        (target / MANIFEST_NAME).write_text(manifest.with_half("decode", entry).to_json(), encoding="utf-8")
        arts.append(target)
    plan = make_plan(config(arts, tmp_path / "plan", fake_python))
    assert plan.instance("decode-0").quantization == "gptq" and plan.instance("prefill-math").quantization is None
    assert "--quantization" in vllm_argv(plan, plan.instance("decode-0"))
    assert plan.dtype == "bfloat16"  # vLLM's GPTQ needs it, and both sides of the handoff share one dtype
    assert any("sym=False" in note for note in plan.notes)  # suntool quantize's default is asymmetric
    with pytest.raises(SuntoolError, match="--dtype bfloat16"):
        make_plan(config(arts, tmp_path / "plan", fake_python, dtype="float32"))


def test_refusals(sun_arts, ps_arts, llama_dir, fake_python, tmp_path):
    with pytest.raises(SuntoolError, match="split them first"):
        make_plan(config([llama_dir], tmp_path / "p", fake_python))
    with pytest.raises(SuntoolError, match="one mode"):
        make_plan(config([sun_arts[0], ps_arts[1]], tmp_path / "p", fake_python))
    with pytest.raises(SuntoolError, match="vllm-venv"):
        make_plan(config(sun_arts, tmp_path / "p", tmp_path / "nope" / "python"))
    with pytest.raises(SuntoolError, match="--connector"):
        make_plan(config(sun_arts, tmp_path / "p", fake_python, connector="p2p"))
    with pytest.raises(SuntoolError, match="clashes"):
        make_plan(config(sun_arts, tmp_path / "p", fake_python, router_port=8101))
    prefill_first = tmp_path / "first"
    shutil.copytree(sun_arts[0], prefill_first)
    manifest = read_manifest(prefill_first)
    (prefill_first / MANIFEST_NAME).write_text(
        replace(manifest, handoff=replace(manifest.handoff, first_token="prefill")).to_json(), encoding="utf-8")
    with pytest.raises(SuntoolError, match="--first-token decode"):
        make_plan(config([prefill_first], tmp_path / "p", fake_python))
    other = make_task_artifacts(llama_dir, tmp_path / "other", ["x"], mode="sun")[0]
    decode = read_manifest(other).decode
    manifest = read_manifest(other)
    (other / MANIFEST_NAME).write_text(
        manifest.with_half("decode", replace(decode, sha256="sha256:" + "0" * 64)).to_json(), encoding="utf-8")
    with pytest.raises(SuntoolError):
        make_plan(config([sun_arts[0], other], tmp_path / "p", fake_python))


def test_plan_json_round_trip_and_version(sun_arts, fake_python, tmp_path):
    plan = make_plan(config(sun_arts, tmp_path / "plan", fake_python, lora=False))
    assert DeployPlan.from_dict(json.loads(plan.to_json())) == plan
    with pytest.raises(SuntoolError, match="version"):
        DeployPlan.from_dict({**plan.to_dict(), "version": 99})
    with pytest.raises(SuntoolError, match="write a plan first"):
        read_plan(tmp_path / "missing")


def test_cli_writes_the_plan(sun_arts, fake_python, tmp_path, capsys):
    out = tmp_path / "plan"
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "vllm", *map(str, sun_arts), "-o", str(out), "--vllm-python", str(fake_python),
              "--decode-instances", "2", "--dtype", "float32"])
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "4 vLLM instance(s)" in stdout and "decode-1" in stdout
    assert read_plan(out).dtype == "float32"
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "vllm", *map(str, sun_arts), "-o", str(out), "--vllm-python", str(fake_python)])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_task_halves_with_identical_weights_share_one_instance(llama_dir, fake_python, tmp_path):
    from suntool.split import SplitConfig, split

    arts = []
    for name in ("a", "b"):
        split(SplitConfig(model=str(llama_dir), out=tmp_path / name, mode="sun"))
        arts.append(tmp_path / name)
    shared = make_plan(config(arts, tmp_path / "p1", fake_python))
    assert [i.name for i in shared.instances] == ["prefill-a", "decode-0"]
    assert shared.model("a").prefill_pool == shared.model("b").prefill_pool == ("prefill-a",)
    assert shared.model("a").kv_key == shared.model("b").kv_key  # the same weights compute the same K/V
    dedicated = make_plan(config(arts, tmp_path / "p2", fake_python, share=False))
    assert [i.name for i in dedicated.instances] == ["prefill-a", "decode-a", "decode-b"]


def test_cpu_instances_get_their_own_cores(sun_arts, fake_python, tmp_path):
    from suntool.deploy.plan import bind_cores

    plan = make_plan(config(sun_arts, tmp_path / "plan", fake_python))
    instances = list(plan.instances)  # three instances
    assert [i.cpu_cores for i in bind_cores(instances, [0, 1, 2, 3, 4, 5])] == ["0,1", "2,3", "4,5"]
    assert [i.cpu_cores for i in bind_cores(instances, [0, 1])] == ["0", "1", "0"]  # more instances than cores
    script = (write_plan(plan, tmp_path / "plan") / "instances" / "decode-0.sh").read_text()
    assert f"export VLLM_CPU_OMP_THREADS_BIND={plan.instance('decode-0').cpu_cores}" in script
    unbound = make_plan(config(sun_arts, tmp_path / "p2", fake_python, cpu_bind="none"))
    assert all(i.cpu_cores is None for i in unbound.instances)
    assert all(i.cpu_cores is None for i in make_plan(config(sun_arts, tmp_path / "p3", fake_python,
                                                             device="cuda")).instances)
