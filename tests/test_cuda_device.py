"""The CUDA adaptor up to the hardware: the spec choice and the refusal without a GPU (no GPU here)."""

from __future__ import annotations

import importlib
import sys

import pytest

from mixexp import devices
from mixexp.devices import cuda
from mixexp.errors import ConfigError


@pytest.fixture
def importable(tmp_path, monkeypatch):
    """Make stand-in top-level modules importable by name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    added = []

    def add(name: str, body: str = "") -> None:
        (tmp_path / f"{name}.py").write_text(body)
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        added.append(name)

    yield add
    for name in added:
        sys.modules.pop(name, None)


def test_local_spec_without_transformer_engine_or_grouped_gemm():
    assert cuda.spec_options() == (False, False)  # neither is installed here
    assert cuda.te_layer_spec(object()) is None


def test_grouped_gemm_package_selects_grouped_experts(importable):
    importable("grouped_gemm")
    assert cuda.spec_options() == (False, True)


def test_transformer_engine_selects_its_spec(importable):
    importable("transformer_engine")
    assert cuda.spec_options() == (True, True)


def test_a_broken_transformer_engine_counts_as_absent(importable):
    importable("transformer_engine", "raise OSError('libcudart.so.12: cannot open shared object file')")
    assert cuda.spec_options() == (False, False)


def test_prepare_without_a_gpu_says_so(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    with pytest.raises(ConfigError) as e:
        devices.prepare("cuda", None)
    assert str(e.value) == (f"hardware.device=cuda but torch {torch.__version__} sees no CUDA GPU (built for CUDA "
                            f"{torch.version.cuda}): install a CUDA build of torch or pick hardware=cpu")
    import os
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
