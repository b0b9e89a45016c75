#!/usr/bin/env bash
# Install MindSpeed and Megatron-LM into a venv the way a user installs them from a clone:
# MindSpeed with pip from its source (kept under $VENV/src/MindSpeed, with its commit), Megatron-LM's source
# tree on the import path (a .pth file: megatron.training beside the installed megatron-core).
# Sources: MINDSPEED_SRC / MEGATRON_LM_SRC, each a directory or a .tar.gz (default: the archives in
# ../shared/third_party/). Usage: tools/setup_mindspeed.sh VENV
set -euo pipefail
venv=${1:?usage: tools/setup_mindspeed.sh VENV}
py="$venv/bin/python"
third_party="$(cd "$(dirname "$0")/.." && pwd)/../shared/third_party"
mindspeed_src=${MINDSPEED_SRC:-$(ls "$third_party"/MindSpeed-*.tar.gz 2>/dev/null | head -n1 || true)}
megatron_src=${MEGATRON_LM_SRC:-$(ls "$third_party"/Megatron-LM-*.tar.gz 2>/dev/null | head -n1 || true)}
[ -n "$mindspeed_src" ] || { echo "error: set MINDSPEED_SRC to a MindSpeed core_r0.16.0 checkout or .tar.gz" >&2; exit 2; }
[ -n "$megatron_src" ] || { echo "error: set MEGATRON_LM_SRC to a Megatron-LM core_v0.16.1 checkout or .tar.gz" >&2; exit 2; }

# unpack SRC DEST: a fresh copy of a directory or archive (one top-level folder) at DEST, and its
# commit in DEST/COMMIT (git's HEAD, or the hex tail of an archive named NAME-<commit>.tar.gz).
unpack() {
  local src=$1 dest=$2 commit=""
  [ -e "$src" ] || { echo "error: $src does not exist" >&2; exit 2; }
  rm -rf "$dest" && mkdir -p "$dest"
  if [ -d "$src" ]; then
    cp -a "$src"/. "$dest"/
    commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || true)
  else
    tar -xzf "$src" -C "$dest" --strip-components=1
    commit=$(basename "$src" .tar.gz | grep -oE -- '-[0-9a-f]{7,40}$' | tr -d - || true)
  fi
  [ -z "$commit" ] || echo "$commit" > "$dest/COMMIT"
}

mkdir -p "$venv/src"
unpack "$mindspeed_src" "$venv/src/MindSpeed"
unpack "$megatron_src" "$venv/src/Megatron-LM"
# What MindSpeed imports on the paths mixexp runs. Not its whole requirements.txt: that pins
# numpy<=1.26.0 (torch 2.13's CPU wheel and the rest of mixexp run numpy 2; MindSpeed's code on
# these paths does too) and pulls gpytorch, pandas, scikit-learn and SQLAlchemy for auto-tuning only.
"$py" -m pip install --quiet scipy einops six decorator pydantic packaging regex pyyaml
"$py" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall "$venv/src/MindSpeed"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(cd "$venv/src/Megatron-LM" && pwd)" > "$site/megatron_lm.pth"
"$py" -c '
from mixexp.devices import npu_versions as v
v.check_installed_pairing()
print(f"MindSpeed {v.mindspeed_version()} ({v.mindspeed_commit()}), Megatron-LM {v.megatron_lm_version()}, "
      f"megatron-core {v.megatron_core_version()}: installed")'
