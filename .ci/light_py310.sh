#!/usr/bin/env bash
# CI, light job on Python 3.10 (the Ascend stack's Python): mixexp installed WITHOUT torch (--no-deps, then
# the few dependencies of its torch-free parts), then
#   1. no 3.11-only syntax or standard library anywhere (vermin, every file of the project);
#   2. the torch-free tests: config composition, layout validation, megatron_args rendering, exit-2 answers;
#   3. the resolver keeps an Ascend node's torch 2.7.1 under `pip install -e '.[npu]'` (.ci/npu_resolve.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY310=
if python3.10 -c '' 2>/dev/null; then PY310=python3.10; fi  # a pyenv shim without 3.10 selected fails here
for candidate in "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do
    if [ -z "$PY310" ] && [ -x "$candidate" ]; then PY310=$candidate; fi
done
[ -n "$PY310" ] || { echo "light_py310: python3.10 is required (pyenv install 3.10, or apt-get install python3.10-venv)" >&2; exit 1; }
VENV=${TMPDIR:-/tmp}/mixexp-light-py310
rm -rf "$VENV"
"$PY310" -m venv "$VENV"
PY=$VENV/bin/python
echo "[light_py310] $("$PY" --version) in $VENV"
"$PY" -m pip install --quiet --no-warn-conflicts --no-deps -e .
# Of mixexp's own dependencies (its installed metadata), what the torch-free tests use: the package needs no
# more to compose, validate and render (pyarrow, wandb, matplotlib... would add minutes here); the SLURM
# launcher's Hydra plugin (hydra_plugins/mixexp_slurm) imports hydra-submitit-launcher whenever Hydra scans plugins.
mapfile -t DEPS < <("$PY" - <<'PYEOF'
import re
from importlib.metadata import requires
for req in requires("mixexp"):
    if re.match(r"(hydra-core|omegaconf|mistral-common|hydra-submitit-launcher)\b", req) and "extra ==" not in req:
        print(req)
PYEOF
)
[ "${#DEPS[@]}" = 4 ] || { echo "light_py310: expected hydra-core, omegaconf, mistral-common, hydra-submitit-launcher in mixexp's requirements, got: ${DEPS[*]}" >&2; exit 1; }
"$PY" -m pip install --quiet --no-warn-conflicts "${DEPS[@]}" pytest vermin
if "$PY" -c 'import torch' 2>/dev/null; then echo "light_py310: torch is installed; this job must run without it" >&2; exit 1; fi

"$VENV/bin/vermin" --no-tips --violations -t=3.10- mixexp bench tests sweeps train.py preprocess.py .ci

echo "[light_py310] installed without torch in ${SECONDS}s"

# Left to the main suite: the whole-product composition test (~700 compositions, minutes on 2 shared cores)
# and the dry run, whose child process builds the model with torch.
"$PY" -m pytest -p no:cacheprovider tests/test_config.py tests/test_layout.py tests/test_megatron_args.py \
    tests/test_cli.py tests/test_fast_answers.py tests/test_install.py tests/test_npu_versions.py \
    --deselect tests/test_config.py::test_every_group_combination_composes \
    --deselect tests/test_fast_answers.py::test_a_valid_dry_run_builds_in_a_child_process
echo "[light_py310] tests done at ${SECONDS}s"

"$PY" .ci/npu_resolve.py
echo "[light_py310] done in ${SECONDS}s"
