"""torch against torch_npu: a torch_npu wheel runs only on the torch it was built for (the version it is named after)."""

from __future__ import annotations

import importlib

import pytest

from mixexp.devices import npu
from mixexp.devices.npu_versions import check_torch_pairing, pairing_error, torch_for
from mixexp.errors import ConfigError

STACK = "mixexp's NPU stack is torch 2.7.1 with torch_npu 26.0.0 (wheel 2.7.1.postN): docs/npu.md"


@pytest.mark.parametrize("torch_npu, torch", [
    ("2.7.1.post11", "2.7.1"), ("2.7.1", "2.7.1"), ("2.1.0.post17", "2.1.0"), ("26.0.0", "2.7.1"),
    ("27.0.0", None), ("dev", None),
])
def test_torch_for(torch_npu, torch):
    assert torch_for(torch_npu) == torch


@pytest.mark.parametrize("torch, torch_npu", [("2.7.1", "2.7.1.post11"), ("2.7.1+cpu", "2.7.1.post11"),
                                              ("2.7.1+cpu", "26.0.0"), ("2.13.0+cpu", "2.13.0")])
def test_pairs(torch, torch_npu):
    assert pairing_error(torch, torch_npu) is None


@pytest.mark.parametrize("torch, torch_npu, wanted", [
    ("2.13.0+cpu", "2.7.1.post11", "2.7.1"),  # pip replaced the torch torch_npu was built for
    ("2.7.1", "2.14.0", "2.14.0"),  # an unpinned `pip install torch_npu` took the newest wheel
    ("2.11.0", "26.0.0", "2.7.1"),
])
def test_mismatch_names_both_versions_and_the_pairing(torch, torch_npu, wanted):
    have = torch.split("+")[0]
    assert pairing_error(torch, torch_npu) == (
        f"torch_npu {torch_npu} is built for torch {wanted}, but torch {torch} is installed: install "
        f"torch=={wanted} (x86_64: {wanted}+cpu), or the torch_npu built for torch {have}. {STACK}")


def test_unknown_release_name_warns(capsys):
    check_torch_pairing({"torch": "2.7.1", "torch_npu": "27.0.0"}.get)
    assert capsys.readouterr().err == ("warning: cannot tell which torch torch_npu 27.0.0 is built for (torch 2.7.1 "
                                       "is installed); mixexp's NPU stack is torch 2.7.1 with torch_npu 26.0.0\n")


def test_stand_in_torch_npu_without_metadata_is_not_checked():
    check_torch_pairing({"torch": "2.13.0"}.get)  # the CPU rehearsal's stand-in module: no distribution


def _dist(root, name, version):
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize("torch_npu, error", [("2.7.1.post11", False), ("2.8.0.post2", True)])
def test_check_installation_reads_the_installed_distributions(tmp_path, monkeypatch, torch_npu, error):
    """Every component present (stand-ins), versions from installed metadata as on a real NPU node."""
    for path in ("torch_npu", "mindspeed", "checkout/megatron/training"):
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "__init__.py").write_text("")
    (tmp_path / "ascend").mkdir()
    _dist(tmp_path, "torch", "2.7.1+cpu")
    _dist(tmp_path, "torch_npu", torch_npu)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    kwargs = {"environ": {"ASCEND_TOOLKIT_HOME": str(tmp_path / "ascend")}, "default_root": str(tmp_path / "none"),
              "search_path": [str(tmp_path / "checkout")]}
    if not error:
        npu.check_installation(**kwargs)
        return
    with pytest.raises(ConfigError) as e:
        npu.check_installation(**kwargs)
    assert str(e.value).startswith("torch_npu 2.8.0.post2 is built for torch 2.8.0, but torch 2.7.1+cpu is installed")
