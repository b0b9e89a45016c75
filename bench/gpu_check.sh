#!/usr/bin/env bash
# GPU check: Mixtral-8x7B's layer on ONE NVIDIA GPU with mixexp's native engine (megatron-core, bf16),
# against the measured matmul peak and against HF transformers' MixtralForCausalLM. Made for the lent
# H200 (bench/DEVICE.md): Python 3.12 with torch already installed, no network.
#
#   bash bench/gpu_check.sh prepare    # here: wheels for the device's Python into .whl/, prints the device command
#   bash bench/gpu_check.sh run        # on the device: install from .whl/ (no index), measure, results in $OUT
#   bash bench/gpu_check.sh selftest   # here: the same install and measuring, 2 steps of a tiny model on CPU
#
# The machine's torch is never replaced: mixexp and the carried wheels go into a venv in /tmp whose
# sys.path ends with the machine Python's own site directories (a .pth file), so the machine's torch,
# numpy, transformers... are used as they are and pip installs only what is missing, from .whl/ alone.
# Knobs (environment): PYTHON (the machine's, default python3), LAYERS (4), GBS (8), ITERS (12), HF_STEPS (4),
# HARDWARE (nvidia_h200: the MFU peak), OUT (results; the device call sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# What the GPU run imports and the device lacks (issue 22: the device has torch, numpy, sentencepiece,
# safetensors, pyarrow, rich, matplotlib, psutil, transformers, tokenizers, triton, einops, pytest).
NEEDS=(megatron-core hydra-core omegaconf)
DEVICE_HAS=(numpy sentencepiece safetensors pyarrow rich matplotlib psutil transformers tokenizers triton einops pytest
            # torch's own dependencies: there with torch
            torch sympy mpmath networkx jinja2 markupsafe fsspec filelock typing-extensions)
DEVICE_PYTHON_VERSION=${DEVICE_PYTHON_VERSION:-3.12}
DEVICE_PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64)

log() { echo "[gpu_check] $*"; }
die() { echo "gpu_check: $*" >&2; exit 1; }

# prepare DIR [local]: the wheels of NEEDS and their dependencies, less what the device has, plus pip and
# setuptools (mixexp's build backend), for the device's Python/platform, or for this Python with `local`.
prepare() {
    local dir=$1 target=${2:-device} py=${PREPARE_PYTHON:-python3}
    local tmp; tmp=$(mktemp -d)
    local where=()
    if [ "$target" != local ]; then
        where=(--only-binary=:all: --python-version "$DEVICE_PYTHON_VERSION" --implementation cp)
        for p in "${DEVICE_PLATFORMS[@]}"; do where+=(--platform "$p"); done
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    # The requirements as pyproject.toml declares them, so the device gets the versions CI tests.
    "$py" - "${NEEDS[@]}" > "$dir/requirements.txt" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
reqs = project["project"]["dependencies"]
for name in sys.argv[1:]:
    (req,) = [r for r in reqs if re.match(rf"{re.escape(name)}\b", r)]
    print(req)
print(*project["build-system"]["requires"], sep="\n")
EOF
    # antlr4-python3-runtime (omegaconf's) is published as an sdist only: build its (pure Python) wheel here.
    "$py" -m pip wheel --quiet --no-deps -w "$dir" "antlr4-python3-runtime==4.9.*"
    "$py" -m pip install --quiet --dry-run --ignore-installed --target "$tmp/t" --report "$tmp/report.json" \
        --find-links "$dir" "${where[@]}" -r "$dir/requirements.txt" pip
    "$py" - "$tmp/report.json" "${DEVICE_HAS[@]}" > "$tmp/pins.txt" <<'EOF'
import json, re, sys
skip = {n.lower() for n in sys.argv[2:]}
for item in json.load(open(sys.argv[1]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name in skip or name.startswith(("nvidia-", "cuda-")) or name == "antlr4-python3-runtime":
        continue
    print(f"{name}=={item['metadata']['version']}")
EOF
    "$py" -m pip download --quiet --no-deps -d "$dir" "${where[@]}" -r "$tmp/pins.txt"
    rm -rf "$tmp"
    log "$(ls "$dir"/*.whl | wc -l) wheels in $dir, $(du -sh "$dir" | cut -f1): $(cd "$dir" && ls *.whl | sed 's/-py.*\|-cp.*//' | tr '\n' ' ')"
}

# install BASE_PYTHON DIR VENV: the overlay venv (see the top), pip run from its carried wheel, --no-index.
install() {
    local base=$1 dir=$2 venv=$3
    "$base" -c 'import torch' || die "$base has no working torch; this check uses the machine's torch"
    local torch_before; torch_before=$("$base" -c 'import torch; print(torch.__version__, torch.__file__)')
    rm -rf "$venv"
    "$base" -m venv --without-pip "$venv"
    local site; site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$base" -c 'import site, sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        > "$site/machine_site.pth"
    local pip; pip=$(ls "$dir"/pip-*.whl | head -1)
    local pipc=("$venv/bin/python" "$pip/pip" --disable-pip-version-check)
    "${pipc[@]}" install --quiet --no-index --find-links "$dir" -r "$dir/requirements.txt"
    "${pipc[@]}" install --quiet --no-index --find-links "$dir" --no-deps -e "$REPO"
    local torch_after; torch_after=$("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.__file__)')
    [ "$torch_before" = "$torch_after" ] || die "torch changed: $torch_before -> $torch_after"
    log "installed into $venv: $("$venv/bin/python" -c 'import megatron.core, hydra, mixexp, torch; print("megatron-core", megatron.core.__version__, "hydra", hydra.__version__, "torch", torch.__version__, "(the machine'"'"'s)")')"
}

# measure PY OUT DEVICE_OVERRIDES...: matmul peak, the native engine through train.py, one profiled step, HF.
measure() {
    local py=$1 out=$2; shift 2
    local model=("$@")
    mkdir -p "$out"
    "$py" - > "$out/env.json" <<'EOF'
import json, platform, torch, transformers, megatron.core
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
print(json.dumps({"gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "transformers": transformers.__version__,
                  "megatron_core": megatron.core.__version__}))
EOF
    log "environment: $(cat "$out/env.json")"
    "$py" bench/gpu_bench.py matmul --n "$MATMUL_N" > "$out/matmul.json"
    log "matmul: $(cat "$out/matmul.json")"
    log "native engine: ${model[*]}"
    timeout --signal=INT "$TRAIN_TIMEOUT_S" "$py" train.py "${model[@]}" cluster.devices_per_node=1 parallel=single \
        parallel.distributed_optimizer=false data=synthetic train.iters="$ITERS" train.warmup_steps=2 \
        train.log_interval=1 hydra.run.dir="$out/native" > "$out/native.log" 2>&1 \
        || { tail -5 "$out/native.log"; die "train.py failed: $out/native.log"; }
    log "native: $("$py" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$out/native/summary.json")"
    "$py" bench/gpu_bench.py profile --warmup 2 "${model[@]}" > "$out/profile.json" 2> "$out/profile.log" \
        || { tail -5 "$out/profile.log"; die "profile failed: $out/profile.log"; }
    log "profile: $(cat "$out/profile.json")"
    "$py" bench/gpu_bench.py hf --warmup 1 --steps "$HF_STEPS" "${model[@]}" > "$out/hf.json" 2> "$out/hf.log" \
        || { tail -5 "$out/hf.log"; die "hf failed: $out/hf.log"; }
    log "hf: $(cat "$out/hf.json")"
    "$py" bench/gpu_report.py "$out" | tee "$out/rows.md"
}

cmd=${1:-}
case "$cmd" in
prepare)
    prepare .whl
    log "device command (bench/DEVICE.md): bash bench/gpu_check.sh run   (with carry: [\".whl\"])"
    ;;
run)
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: run this on the GPU machine (selftest runs on CPU)"
    [ -f .whl/requirements.txt ] || die ".whl/ is missing: run 'bash bench/gpu_check.sh prepare' here and carry .whl"
    OUT=${OUT:-outputs/gpu_check/$(date +%Y%m%d-%H%M%S)}
    log "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    install "${PYTHON:-python3}" .whl /tmp/mixexp-gpu
    MATMUL_N=8192 ITERS=${ITERS:-12} HF_STEPS=${HF_STEPS:-4} TRAIN_TIMEOUT_S=${TRAIN_TIMEOUT_S:-300}
    measure /tmp/mixexp-gpu/bin/python "$OUT" model=mixtral_proxy_gpu model.num_layers="${LAYERS:-4}" \
        hardware="${HARDWARE:-nvidia_h200}" train.seq_length=4096 train.micro_batch_size=1 \
        train.global_batch_size="${GBS:-8}" train.precision=bf16
    ;;
selftest)
    # This machine's Python and torch stand in for the device's: a base venv with torch and what the device
    # has (made once, kept in /tmp), the wheels for this Python into .whl-selftest, then install and measure
    # exactly as `run` does, with a 1-layer tiny model on CPU for 2 steps.
    py=${PYTHON:-python3.11}
    base=${SELFTEST_BASE:-/tmp/mixexp-gpu-selftest-base}
    if ! "$base/bin/python" -c 'import torch, transformers' 2>/dev/null; then
        log "making the stand-in machine Python $base (torch + what the device has)"
        rm -rf "$base" && "$py" -m venv "$base"
        "$base/bin/python" -m pip install --quiet -c constraints-cpu.txt torch numpy sentencepiece safetensors \
            pyarrow rich matplotlib psutil "transformers>=4.45" tokenizers einops pytest
    fi
    PREPARE_PYTHON=$base/bin/python prepare .whl-selftest local
    install "$base/bin/python" .whl-selftest /tmp/mixexp-gpu-selftest
    OUT=${OUT:-$(mktemp -d)/gpu_check_selftest}
    MATMUL_N=256 ITERS=2 HF_STEPS=1 TRAIN_TIMEOUT_S=600
    measure /tmp/mixexp-gpu-selftest/bin/python "$OUT" model=mixtral_tiny model.num_layers=1 hardware=cpu \
        train.seq_length=64 train.micro_batch_size=1 train.global_batch_size=2 train.precision=fp32
    for f in env matmul profile hf; do [ -s "$OUT/$f.json" ] || die "selftest: $OUT/$f.json is missing"; done
    [ -s "$OUT/native/summary.json" ] || die "selftest: no summary.json from train.py"
    log "selftest passed: $OUT"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare|run|selftest" >&2
    exit 2
    ;;
esac
