"""The NPU adaptor up to the hardware: what it checks, the environment, and the import order.

No NPU here. The import-order test runs the adaptor in a subprocess against stand-in
`torch_npu`, `mindspeed.megatron_adaptor` and `megatron.training` modules written to a
temp dir: they record what they see when imported (sys.argv, which modules are loaded).
The claim under test is the order and the argv, not NPU compute. torch is the real one.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixexp import devices
from mixexp.devices import npu
from mixexp.errors import ConfigError
from mixexp.megatron_args import compose, render

REPO = Path(__file__).resolve().parents[1]
INSTALL = "install them with `pip install -e .[npu]` and the steps in docs/npu.md"


def _seed_cfg():
    return OmegaConf.create(OmegaConf.to_container(compose(["+experiment=mixtral_8x7b_seed"]), resolve=False))


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


FAKES = {
    # Stand-ins; each records what it sees at import time.
    "torch_npu/__init__.py": (
        "import sys, types, torch\n"
        "SAW_TORCH = 'torch' in sys.modules\n"
        "DEVICES = []\n"
        "torch.npu = types.SimpleNamespace(set_device=DEVICES.append, current_device=lambda: DEVICES[-1])\n"),
    "torch_npu/contrib/__init__.py": "",
    "mindspeed/__init__.py": "",
    "mindspeed/megatron_adaptor.py": (
        "import sys\n"
        "ARGV = list(sys.argv)\n"
        "MEGATRON_LOADED = sorted(m for m in sys.modules if m == 'megatron' or m.startswith('megatron.'))\n"
        "TORCH_NPU_LOADED = 'torch_npu' in sys.modules\n"),
    # What mixexp's switch checks read of MindSpeed: its op builder (op counting) and its patch registry.
    "mindspeed/op_builder/__init__.py": "",
    "mindspeed/op_builder/builder.py": "class MindSpeedOpBuilder:\n    def load(self):\n        return None\n",
    "mindspeed/patch_utils.py": (
        "import types\n"
        "class MindSpeedPatchesManager:\n"
        "    patches_info = {'megatron.training.arguments.parse_args': types.SimpleNamespace(is_applied=True)}\n"),
    # A Megatron-LM checkout's megatron/training (no megatron/__init__.py: a namespace package,
    # as in Megatron-LM, merged with megatron-core's megatron/core).
    "checkout/megatron/training/__init__.py": "",
    "checkout/megatron/training/arguments.py": (
        "import sys\n"
        "CALLS = []\n"
        "def parse_args(extra_args_provider=None, ignore_unknown_args=False):\n"
        "    CALLS.append(['parse_args', list(sys.argv[1:]), ignore_unknown_args])\n"
        "    return {'argv': list(sys.argv[1:])}\n"
        "def validate_args(args, defaults={}):\n"
        "    CALLS.append(['validate_args'])\n"),
    "checkout/megatron/training/global_vars.py": (
        "ARGS = None\n"
        "def set_args(args):\n"
        "    global ARGS\n"
        "    ARGS = args\n"),
}

DRIVER = r"""
import importlib.abc, json, sys
from omegaconf import OmegaConf

WATCH = {"torch", "torch_npu", "mindspeed", "mindspeed.megatron_adaptor", "megatron.core", "megatron.training",
         "megatron.training.arguments", "megatron.training.global_vars"}
ORDER = []


class Recorder(importlib.abc.MetaPathFinder):
    # Records each watched module when its code runs (a found spec alone is not an import).
    def find_spec(self, name, path, target=None):
        if name not in WATCH:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                ORDER.append(name)
                real.exec_module(module)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, Recorder())
sys.argv = ["worker.py", "RUN_DIR"]
cfg = OmegaConf.load(__import__("os").environ["CFG"])

from mixexp import devices
devices.prepare("npu", cfg)            # what worker.run does first
import megatron.training.arguments     # then megatron
devices.finish("npu")

import mindspeed.megatron_adaptor as adaptor, torch_npu
from megatron.training import arguments, global_vars
print(json.dumps({
    "order": ORDER,
    "adaptor_argv": adaptor.ARGV,
    "megatron_loaded_at_adaptor": adaptor.MEGATRON_LOADED,
    "torch_npu_loaded_at_adaptor": adaptor.TORCH_NPU_LOADED,
    "torch_before_torch_npu": torch_npu.SAW_TORCH,
    "devices": torch_npu.DEVICES,
    "calls": arguments.CALLS,
    "global_args": global_vars.ARGS,
    "env": {k: __import__("os").environ.get(k) for k in
            ("PYTORCH_NPU_ALLOC_CONF", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "CUDA_DEVICE_MAX_CONNECTIONS")},
}))
"""


def test_import_order_and_argv_with_stand_in_modules(tmp_path):
    _write(tmp_path, FAKES)
    (tmp_path / "ascend").mkdir()
    cfg = _seed_cfg()
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    env = {"PATH": "/usr/bin:/bin", "CFG": str(tmp_path / "cfg.yaml"), "LOCAL_RANK": "5",
           "ASCEND_TOOLKIT_HOME": str(tmp_path / "ascend"), "HCCL_EXEC_TIMEOUT": "900",
           "PYTHONPATH": f"{tmp_path}:{tmp_path / 'checkout'}:{REPO}"}
    out = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])

    order = seen["order"]
    assert order.index("torch") < order.index("torch_npu") < order.index("mindspeed.megatron_adaptor") \
        < order.index("megatron.training")
    assert "megatron.core" not in order  # the adaptor needs nothing of megatron; the worker imports it later
    assert seen["torch_before_torch_npu"] and seen["torch_npu_loaded_at_adaptor"]
    assert seen["megatron_loaded_at_adaptor"] == []
    # MindSpeed saw exactly the rendered arguments after the program name.
    rendered = render(cfg)
    assert seen["adaptor_argv"] == ["worker.py", *rendered]
    assert "--use-fused-rmsnorm" in rendered and "--context-parallel-algo" in rendered
    assert seen["devices"] == [5]  # bound to LOCAL_RANK
    # finish(): Megatron's parser read the same argv, validated, and set the global args.
    assert seen["calls"] == [["parse_args", rendered, True], ["validate_args"]]
    assert seen["global_args"] == {"argv": rendered}
    # The NPU environment, without overriding what the launcher or user already set.
    assert seen["env"] == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True", "HCCL_CONNECT_TIMEOUT": "600",
                           "HCCL_EXEC_TIMEOUT": "900", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}


def test_npu_env_follows_the_collective_timeout():
    cfg = _seed_cfg()
    cfg.train.collective_timeout_s = 1800
    assert npu.npu_env(cfg) == {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
                                "HCCL_CONNECT_TIMEOUT": "1800", "HCCL_EXEC_TIMEOUT": "1800",
                                "CUDA_DEVICE_MAX_CONNECTIONS": "1"}


# --- what is missing, in one message ------------------------------------------------------------

def test_everything_missing_is_named_in_one_line(tmp_path, monkeypatch):
    # No NPU packages here; MindSpeed itself may be installed (make setup-mindspeed): hide it.
    monkeypatch.setattr(npu, "_module_found", lambda name: False)
    with pytest.raises(ConfigError) as e:
        npu.check_installation(environ={}, default_root=str(tmp_path / "Ascend"), search_path=[str(tmp_path)])
    assert str(e.value) == (
        f"hardware.device=npu needs torch_npu, CANN (ASCEND_TOOLKIT_HOME, or {tmp_path / 'Ascend'}), "
        f"MindSpeed (the mindspeed package), a Megatron-LM checkout (megatron.training on PYTHONPATH): {INSTALL}")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """torch_npu and mindspeed importable, a CANN dir, a Megatron-LM checkout: each removable by the test."""
    _write(tmp_path, {"torch_npu/__init__.py": "", "mindspeed/__init__.py": "",
                      "checkout/megatron/training/__init__.py": ""})
    (tmp_path / "ascend").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return {"environ": {"ASCEND_TOOLKIT_HOME": str(tmp_path / "ascend")},
            "default_root": str(tmp_path / "none"), "search_path": [str(tmp_path / "checkout")]}


def test_nothing_missing(installed):
    assert npu.missing_components(**installed) == []
    npu.check_installation(**installed)


@pytest.mark.parametrize("remove, named", [
    ("cann", "CANN (ASCEND_TOOLKIT_HOME, or {root})"),
    ("checkout", "a Megatron-LM checkout (megatron.training on PYTHONPATH)"),
])
def test_one_missing_piece(installed, tmp_path, remove, named):
    if remove == "cann":
        installed["environ"] = {"ASCEND_TOOLKIT_HOME": str(tmp_path / "gone")}
    else:
        installed["search_path"] = [str(tmp_path)]  # megatron-core's site-packages has no megatron/training
    with pytest.raises(ConfigError) as e:
        npu.check_installation(**installed)
    assert str(e.value) == f"hardware.device=npu needs {named.format(root=tmp_path / 'none')}: {INSTALL}"


def test_cann_found_by_home_path_or_default_root(tmp_path):
    (tmp_path / "Ascend").mkdir()
    assert npu.cann_home({}, str(tmp_path / "Ascend")) == str(tmp_path / "Ascend")
    assert npu.cann_home({"ASCEND_HOME_PATH": str(tmp_path)}, "/nonexistent") == str(tmp_path)
    assert npu.cann_home({}, "/nonexistent") is None


def test_megatron_core_alone_is_not_a_megatron_lm_checkout():
    import importlib.util

    site = Path(importlib.util.find_spec("omegaconf").origin).parents[1]
    assert (site / "megatron" / "core").is_dir() and npu.megatron_lm_checkout([str(site)]) is None


def test_prepare_refuses_before_importing_anything(monkeypatch):
    """On this machine (no torch_npu, no CANN): the adaptor fails with the install message, importing nothing."""
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.setattr(npu, "_prepared", False)
    argv = list(sys.argv)
    with pytest.raises(ConfigError) as e:
        devices.prepare("npu", _seed_cfg())
    assert str(e.value).startswith("hardware.device=npu needs torch_npu, ") and str(e.value).endswith(INSTALL)
    assert sys.argv == argv and "torch_npu" not in sys.modules and "mindspeed" not in sys.modules


def test_prepare_refuses_when_megatron_came_first(installed, monkeypatch):
    monkeypatch.setattr(npu, "_prepared", False)
    monkeypatch.setattr(npu, "check_installation", lambda **kwargs: None)
    monkeypatch.setitem(sys.modules, "megatron.core", types.ModuleType("megatron.core"))
    with pytest.raises(RuntimeError) as e:
        npu.prepare(_seed_cfg())
    assert str(e.value) == ("megatron.core was imported before mindspeed.megatron_adaptor; MindSpeed's patches must "
                            "come first: call mixexp.devices.prepare(\"npu\", cfg) before importing megatron")


def test_finish_turns_megatron_validation_errors_into_config_errors(monkeypatch):
    def validate_args(args, defaults={}):
        raise AssertionError("seq-length should be a multiple of 2 * context-parallel-size if context-parallel-size > 1.")

    training = types.ModuleType("megatron.training")
    training.arguments = types.SimpleNamespace(parse_args=lambda ignore_unknown_args=False: object(),
                                               validate_args=validate_args)
    training.global_vars = types.SimpleNamespace(set_args=lambda a: None)
    monkeypatch.setitem(sys.modules, "megatron.training", training)
    # A stand-in megatron.training, which MindSpeed did not patch: that check is test_rehearsal's.
    from mixexp.devices import npu_checks
    monkeypatch.setattr(npu_checks, "check_installed_patches", lambda: None)
    with pytest.raises(ConfigError) as e:
        npu.finish()
    assert str(e.value) == ("Megatron-LM rejected the rendered arguments: seq-length should be a multiple of "
                            "2 * context-parallel-size if context-parallel-size > 1.")
