"""Does `pip install -e '.[npu]'` keep the torch of an Ascend node? A dry run of pip's resolver, no install.

Two environments made here (Python of this interpreter, nothing in them but distribution metadata):
  x86_64 node:  torch 2.7.1+cpu installed (the PyTorch CPU build torch_npu's x86 wheels require);
  any node:     torch 2.7.1 and torch_npu 2.7.1.post11 installed (aarch64 wheels come from Ascend's release).
Each must resolve without touching torch, and the first must take torch_npu 2.7.1.postN from the index.
Exit 1 with the reason otherwise. Usage: python .ci/npu_resolve.py  (from the repository root; needs PyPI)
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fake_dist(site: Path, name: str, version: str) -> None:
    """An installed distribution as pip sees one: metadata only, no code."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def resolve(installed: dict[str, str]) -> dict[str, str]:
    """name -> version of what `pip install -e .[npu]` would install into an env holding `installed`."""
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        python = env / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        for name, version in installed.items():
            fake_dist(Path(purelib), name, version)
        report = Path(tmp) / "report.json"
        run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
                              "--report", str(report), "-e", f"{REPO}[npu]"], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"npu_resolve: with {installed} the resolver failed:\n{run.stderr.strip()}")
        return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


def main() -> None:
    assert sysconfig.get_platform().endswith("x86_64"), "the index serves torch_npu 2.7.1.postN for x86_64 only"
    cases = [({"torch": "2.7.1+cpu"}, True), ({"torch": "2.7.1", "torch_npu": "2.7.1.post11"}, False)]
    for installed, wants_torch_npu in cases:
        plan = resolve(installed)
        if "torch" in plan:
            sys.exit(f"npu_resolve: with {installed} pip would replace torch by {plan['torch']}")
        npu = plan.get("torch-npu")
        if wants_torch_npu and not (npu or "").startswith("2.7.1"):
            sys.exit(f"npu_resolve: with {installed} pip would install torch_npu {npu}, not 2.7.1.postN")
        if not wants_torch_npu and npu:
            sys.exit(f"npu_resolve: with {installed} pip would replace torch_npu by {npu}")
        print(f"npu_resolve: installed {installed}: torch kept; would install torch_npu {npu or '(kept)'}, "
              f"megatron-core {plan.get('megatron-core')}, {len(plan)} distributions in all")


if __name__ == "__main__":
    main()
