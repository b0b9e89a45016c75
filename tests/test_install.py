"""What the package declares fits every target: the Ascend stack (Python 3.10, torch 2.7.1 + torch_npu 2.7.1.postN),
the lent GPU (Python 3.12, torch 2.11) and the CPU set-up (Python 3.11, the local torch 2.13.0 CPU wheel)."""

import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

try:
    import tomllib  # novermin (3.11+; tomli below)
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirement(name: str, reqs: list[str]) -> Requirement:
    (req,) = [Requirement(r) for r in reqs if Requirement(r).name == name]
    return req


def test_python_versions_of_every_target():
    python = SpecifierSet(PROJECT["requires-python"])
    assert [v for v in ("3.9", "3.10", "3.11", "3.12") if v in python] == ["3.10", "3.11", "3.12"]


def test_torch_range_holds_the_ascend_gpu_and_cpu_torches():
    torch = requirement("torch", PROJECT["dependencies"]).specifier
    assert [v for v in ("2.6.0", "2.7.0", "2.7.1", "2.11.0", "2.13.0") if v in torch] == ["2.7.1", "2.11.0", "2.13.0"]
    assert str(requirement("megatron-core", PROJECT["dependencies"]).specifier) == "==0.16.1"


def test_npu_extra_pairs_torch_npu_with_torch_2_7_1():
    torch_npu = requirement("torch_npu", PROJECT["optional-dependencies"]["npu"]).specifier
    accepted = [v for v in ("2.7.1", "2.7.1.post11", "2.7.2", "2.8.0", "2.13.0") if torch_npu.contains(v)]
    assert accepted == ["2.7.1", "2.7.1.post11"]


def test_cpu_setup_pins_the_local_torch_wheel():
    pins = [line for line in (REPO / "constraints-cpu.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins == ["torch==2.13.0"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install --quiet -c constraints-cpu\.txt -e '\.\[test\]'", makefile)
    assert re.search(r"^\$\(STAMP\): pyproject\.toml constraints-cpu\.txt$", makefile, re.M)
