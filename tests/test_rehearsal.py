"""hardware=ascend_rehearsal: the real MindSpeed (core_r0.16.0) patches the real Megatron-LM on CPU ranks.

Only torch_npu is replaced, by mixexp's CPU stand-in (mixexp/devices/npu_standin, ops in npu_ops.py,
each tested in test_npu_ops.py). The claim: for every layout, the MindSpeed-patched model trains exactly
like plain megatron-core, with the seed's switches on and with them off; a switch MindSpeed does not
apply, a MindSpeed without its Megatron-LM patches, and a mismatched MindSpeed/Megatron pair each end
the run with one line and exit 2. Needs `make setup-mindspeed` (CI runs it; elsewhere these skip).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, read_jsonl, run_layout_sweep, run_train
from mixexp.devices import npu
from mixexp.devices import npu_versions as versions
from mixexp.errors import ConfigError

INSTALLED = importlib.util.find_spec("mindspeed") is not None and npu.megatron_lm_checkout() is not None
# In CI a missing install fails these tests (the run exits 2 naming make setup-mindspeed); elsewhere they skip.
pytestmark = pytest.mark.skipif(not INSTALLED and os.environ.get("CI") != "true",
                                reason="MindSpeed not installed: make setup-mindspeed")

LAYOUTS = ["single", "tp2", "pp2", "ep2", "cp2", "dp2", "tp2_pp2"]
STEPS = 3
COMMON = [f"train.iters={STEPS}", "train.precision=fp32", "train.seed=1234", "train.global_batch_size=4",
          "train.seq_length=64"]
# The seed's MindSpeed switches, off. Fused RMSNorm stays: MindSpeed core_r0.16.0 always uses it
# (test_a_switch_mindspeed_forces_on_is_refused). Flash attention is not one of the seed's fused-kernel
# switches and context parallelism needs it.
SWITCHES_OFF = ["npu.use_fused_swiglu=false", "npu.use_fused_rotary_pos_emb=false", "npu.moe_grouped_gemm=false",
                "npu.use_fused_moe_token_permute_and_unpermute=false", "npu.moe_permutation_async_comm=false"]


def _sweep(tmp_path_factory, name: str, *overrides: str) -> dict:
    sweep_dir = tmp_path_factory.mktemp(name)
    return {"dir": sweep_dir, "jobs": run_layout_sweep(sweep_dir, LAYOUTS, *COMMON, *overrides)}


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return _sweep(tmp_path_factory, "native")


@pytest.fixture(scope="module")
def rehearsal_on(tmp_path_factory):
    return _sweep(tmp_path_factory, "rehearsal_on", "hardware=ascend_rehearsal")


@pytest.fixture(scope="module")
def rehearsal_off(tmp_path_factory):
    return _sweep(tmp_path_factory, "rehearsal_off", "hardware=ascend_rehearsal", *SWITCHES_OFF)


def _rows(sweep, layout):
    return read_jsonl(sweep["jobs"][layout] / "metrics.jsonl")


def _assert_same_training(rehearsed, native, layout):
    want, got = _rows(native, layout), _rows(rehearsed, layout)
    assert len(got) == len(want) == STEPS
    assert want[-1]["loss"] < want[0]["loss"] - 0.05  # it trained, so equality means something
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), f"{layout} step {a['step']}: loss"
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), f"{layout} step {a['step']}: grad norm"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_switches_on_train_like_plain_megatron(rehearsal_on, native, layout):
    _assert_same_training(rehearsal_on, native, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_switches_off_train_like_plain_megatron(rehearsal_off, native, layout):
    _assert_same_training(rehearsal_off, native, layout)


def test_the_summary_says_what_ran(rehearsal_on, rehearsal_off):
    stack = json.loads((rehearsal_on["jobs"]["ep2"] / "summary.json").read_text())["stack"]
    assert stack["torch_npu"] == "cpu-standin"
    assert stack["mindspeed"] == versions.mindspeed_version() == "0.16.0"
    assert stack["megatron_core"] == stack["megatron_lm"] == "0.16.1"
    assert stack["mindspeed_commit"] == versions.mindspeed_commit()
    assert {"moe_grouped_gemm", "moe_permute_fusion", "use_flash_attn"} <= set(stack["mindspeed_features"])
    off = json.loads((rehearsal_off["jobs"]["ep2"] / "summary.json").read_text())["stack"]
    assert not {"moe_grouped_gemm", "moe_permute_fusion"} & set(off["mindspeed_features"])
    cp = json.loads((rehearsal_on["jobs"]["cp2"] / "summary.json").read_text())["stack"]
    assert "context_parallel_size" in cp["mindspeed_features"]


def test_the_sweep_compares_like_any_sweep(rehearsal_on):
    rows = list(csv.DictReader((rehearsal_on["dir"] / "comparison.csv").open()))
    assert sorted(row["status"] for row in rows) == ["ok"] * len(LAYOUTS)
    by_job = {row["job"]: row for row in rows}
    for job in rehearsal_on["jobs"].values():
        summary = json.loads((job / "summary.json").read_text())
        assert float(by_job[job.name]["final_loss"]) == pytest.approx(summary["final_loss"])


def _one_line_exit_2(result, expected: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and expected in error[0], result.stderr[-2000:]


def test_a_switch_mindspeed_forces_on_is_refused(tmp_path):
    result = run_train("hardware=ascend_rehearsal", "data=synthetic", "train.iters=2", "npu.use_fused_rmsnorm=false",
                       f"hydra.run.dir={tmp_path}")
    _one_line_exit_2(result, "error: npu.use_fused_rmsnorm=false did not take effect: MindSpeed called "
                             "npu_rms_norm")
    assert not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text()


def test_a_switch_mindspeed_turns_off_is_refused(tmp_path):
    """An older torch_npu without the unpermute op: MindSpeed sets its fused-permute flag to False itself."""
    result = run_train("hardware=ascend_rehearsal", "data=synthetic", "train.iters=2", f"hydra.run.dir={tmp_path}",
                       env={"MIXEXP_STANDIN_WITHOUT_OPS": "npu_moe_token_unpermute_with_routing_map"})
    _one_line_exit_2(result, "error: --use-fused-moe-token-permute-and-unpermute did not take effect: "
                             "MindSpeed turned it off while validating the arguments")


def test_without_megatron_training_mindspeed_patches_nothing_and_the_run_stops(tmp_path):
    """pydantic missing: `import megatron.training` fails and MindSpeed silently runs as megatron-core only."""
    hidden = tmp_path / "hide"
    (hidden / "pydantic").mkdir(parents=True)
    (hidden / "pydantic" / "__init__.py").write_text(  # what importing an absent package raises
        "raise ModuleNotFoundError(\"No module named 'pydantic'\", name='pydantic')\n")
    result = run_train("hardware=ascend_rehearsal", "data=synthetic", "train.iters=2",
                       f"hydra.run.dir={tmp_path / 'run'}",
                       env={"PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])})
    _one_line_exit_2(result, "error: MindSpeed applied no Megatron-LM training patches: `import "
                             "megatron.training` fails (ModuleNotFoundError: No module named 'pydantic')")


def test_a_mismatched_megatron_is_refused_before_launch(tmp_path):
    """A Megatron-LM core_r0.15 checkout first on PYTHONPATH: its megatron/core is the one that imports."""
    fake = tmp_path / "Megatron-LM"
    (fake / "megatron" / "training").mkdir(parents=True)
    (fake / "megatron" / "training" / "__init__.py").write_text("")
    (fake / "megatron" / "core").mkdir()
    (fake / "megatron" / "core" / "package_info.py").write_text("MAJOR = 0\nMINOR = 15\nPATCH = 2\n")
    result = run_train("hardware=ascend_rehearsal", "train.iters=2", f"hydra.run.dir={tmp_path / 'run'}",
                       env={"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])})
    _one_line_exit_2(result, "error: MindSpeed 0.16.0 (branch core_r0.16.0) pairs with Megatron core 0.16.x, but "
                             "megatron-core 0.15.2 is installed: install Megatron-LM core_v0.16.x, or MindSpeed "
                             "core_r0.15.0 (docs/npu.md)")
    assert not (tmp_path / "run" / "errors").exists()  # answered before any rank started


def test_the_pairing_rule():
    versions.check_pairing("0.16.0", "0.16.1", "0.16.1")
    with pytest.raises(ConfigError) as exc:
        versions.check_pairing("0.16.0", "0.15.2", None)
    assert str(exc.value) == ("MindSpeed 0.16.0 (branch core_r0.16.0) pairs with Megatron core 0.16.x, but "
                              "megatron-core 0.15.2 is installed: install Megatron-LM core_v0.16.x, or MindSpeed "
                              "core_r0.15.0 (docs/npu.md)")
    with pytest.raises(ConfigError, match="the Megatron-LM checkout on the path is 0.15.2, but megatron-core 0.16.1"):
        versions.check_pairing("0.16.0", "0.16.1", "0.15.2")
    with pytest.warns(UserWarning, match="cannot tell whether MindSpeed master pairs"):
        versions.check_pairing("master", "0.16.1", "0.16.1")


def test_the_standin_is_not_importable_outside_rehearsal_ranks():
    result = subprocess.run([sys.executable, "-c", "import torch_npu"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "No module named 'torch_npu'" in result.stderr


def test_a_real_torch_npu_is_never_shadowed(tmp_path, monkeypatch):
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="hardware.rehearsal=true on a machine with a real torch_npu"):
        npu.check_installation(rehearsal=True)
