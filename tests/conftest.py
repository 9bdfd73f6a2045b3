"""Shared fixtures: tiny checkpoints of each architecture, an isolated store and cache."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.tiny_models import ARCHITECTURES, build_checkpoint, build_tokenizer


def pytest_configure(config):
    """Module- and session-scoped fixtures write shared halves too: never into the user's store."""
    os.environ["SUNTOOL_STORE"] = tempfile.mkdtemp(prefix="suntool-test-store-")
    import torch

    torch.set_num_threads(1)  # tiny models: thread start-up costs more than it saves, and CI has 2 shared cores


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory, monkeypatch):
    """Every test writes shared halves into its own store, never the user's."""
    monkeypatch.setenv("SUNTOOL_STORE", str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tokenizer):
    """{arch: checkpoint dir} for every supported architecture (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_checkpoint(arch, root / arch, tokenizer=tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_dir(tiny_checkpoints):
    return tiny_checkpoints["llama"]
