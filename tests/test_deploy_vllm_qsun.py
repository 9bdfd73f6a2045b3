"""QSUN on vLLM's CPU build: what happens to a 4-bit GPTQ decode half from `suntool quantize`.

`suntool quantize` writes asymmetric GPTQ (`sym: false`, its default); vLLM 0.32 loads GPTQ only
symmetric (4 or 8 bits). The plan says so (a note, and bfloat16 for every instance, since vLLM runs
GPTQ only in bf16/fp16 and both sides of the handoff need one dtype), and starting it fails with
vLLM's own message, quoted by `suntool deploy` (one prefill + one decode instance, the decode one
stops at its config check). Run through `make test-vllm`.
"""

from __future__ import annotations

import pytest

from suntool.deploy.files import write_plan
from suntool.deploy.launch import Deployment
from suntool.deploy.plan import DeployConfig, make_plan
from suntool.errors import SuntoolError
from suntool.quantize import QuantizeArtifactConfig, quantize_artifact
from tests.deploy_helpers import VLLM_PYTHON, build_vllm_checkpoint
from tests.test_serve_engine import make_task_artifacts

pytestmark = pytest.mark.vllm


def test_asymmetric_gptq_decode_half_is_refused_by_vllm_with_its_message(tmp_path):
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: build it with `make vllm-venv` (make test-vllm does)")
    checkpoint = build_vllm_checkpoint(tmp_path / "base")
    [art] = make_task_artifacts(checkpoint, tmp_path, ["math"])
    quantize_artifact(QuantizeArtifactConfig(artifact=art, bits=4, group_size=32, method="rtn"))
    config = DeployConfig(artifacts=(str(art),), out=tmp_path / "plan", vllm_python=str(VLLM_PYTHON),
                          enforce_eager=True, max_model_len=512, kv_cache_gib=1, base_port=18470,
                          router_port=18469, allow_mismatch=True)
    plan = make_plan(config)
    assert plan.instance("decode-0").quantization == "gptq" and plan.dtype == "bfloat16"
    assert any("sym=False" in note for note in plan.notes)
    deployment = Deployment(write_plan(plan, config.out), start_timeout=600)
    with pytest.raises(SuntoolError, match=r"decode-0 exited(.|\n)*Unsupported quantization config: bits=4, sym=False"):
        deployment.start_instances()
    assert all(proc.poll() is not None for proc in deployment.procs.values())  # nothing left running
