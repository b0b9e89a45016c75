#!/usr/bin/env bash
# GPU check: train a Mixtral-proportioned MoE on ONE NVIDIA GPU with mixexp's native engine
# (megatron-core, NCCL, bf16) and print tokens/s and MFU.
#
#   bash bench/gpu_check.sh            # H200 (141 GB): the 4-layer proxy, ~6.1 B parameters
#   HARDWARE=nvidia_h100 LAYERS=2 bash bench/gpu_check.sh   # 80 GB GPUs: 2 layers
#
# Model: conf/model/mixtral_proxy_gpu.yaml: Mixtral-8x7B's layer (hidden 4096, ffn 14336, 32 heads,
# 8 KV groups, 8 experts top-2) at 4 layers, seq 4096, synthetic tokens, global batch 8 x 4096.
# Budget: setup (only when the venv lacks a CUDA torch) + a training run capped at 7 minutes.
# Knobs (environment): HARDWARE (conf/hardware name for the MFU peak), LAYERS, ITERS, GBS, PYTHON,
# TORCH_INDEX_URL (a pip index with CUDA builds of torch, if PyPI is not reachable).
set -euo pipefail
cd "$(dirname "$0")/.."

HARDWARE=${HARDWARE:-nvidia_h200}
LAYERS=${LAYERS:-4}
ITERS=${ITERS:-20}
GBS=${GBS:-8}
PY=${PYTHON:-.venv/bin/python}
TRAIN_TIMEOUT_S=${TRAIN_TIMEOUT_S:-420}
RUN_DIR=outputs/gpu_check/$(date +%Y%m%d-%H%M%S)

command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found: run this on a machine with an NVIDIA GPU" >&2; exit 1; }
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
echo "[gpu_check] $(date -u +%Y-%m-%dT%H:%M:%SZ) GPU: $GPU"

has_cuda_torch() { [ -x "$1" ] && "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

# 1. Set up: the project's venv when its torch sees the GPU, else a separate .venv-gpu with a CUDA
#    build of the same torch (PyPI's Linux wheel of torch 2.13.0 is a CUDA build).
if ! has_cuda_torch "$PY"; then
    PY=.venv-gpu/bin/python
    if ! has_cuda_torch "$PY"; then
        echo "[gpu_check] setting up .venv-gpu (torch with CUDA, megatron-core, mixexp)"
        [ -x "$PY" ] || python3.11 -m venv .venv-gpu
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            "$PY" -m pip install --quiet "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
        fi
        "$PY" -m pip install --quiet -e .
        has_cuda_torch "$PY" || { echo "gpu_check: torch in .venv-gpu has no CUDA; set TORCH_INDEX_URL to an index with CUDA builds of torch 2.13.0 and rerun" >&2; exit 1; }
    fi
fi
"$PY" - <<'EOF'
import torch
from mixexp.devices.cuda import spec_options
te, grouped = spec_options()
print(f"[gpu_check] torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}; "
      f"layer spec: {'Transformer Engine' if te else 'megatron-core local + SDPA attention'}; "
      f"grouped GEMM experts: {'yes' if grouped else 'no'}")
EOF

# 2. Train: one rank (cluster.devices_per_node=1), bf16, seq 4096, synthetic data; warm-up steps
#    are left out of the averages.
echo "[gpu_check] training $LAYERS layers x $ITERS steps of $GBS x 4096 tokens; run dir $RUN_DIR"
timeout --signal=INT "$TRAIN_TIMEOUT_S" "$PY" train.py \
    model=mixtral_proxy_gpu model.num_layers="$LAYERS" \
    hardware="$HARDWARE" cluster.devices_per_node=1 parallel=single \
    data=synthetic \
    train.seq_length=4096 train.micro_batch_size=1 train.global_batch_size="$GBS" \
    train.iters="$ITERS" train.warmup_steps=3 train.precision=bf16 train.log_interval=1 \
    hydra.run.dir="$RUN_DIR"

# 3. Report.
"$PY" - "$RUN_DIR/summary.json" "$GPU" "$HARDWARE" "$LAYERS" "$GBS" <<'EOF'
import datetime, json, sys
path, gpu, hardware, layers, gbs = sys.argv[1:]
s = json.load(open(path))
if s["status"] != "ok":
    sys.exit(f"gpu_check: run failed: {s.get('error')}")
mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "-"
print(f"[gpu_check] tokens/s: {s['tokens_per_sec']:,.0f}  TFLOP/s: {s['tflops_per_device']:.1f}  MFU: {mfu} "
      f"(peak of hardware={hardware})  step: {s['step_time_s']:.3f} s  peak memory: {s['peak_memory_gb']:.1f} GB  "
      f"params: {s['params_total']:,}  loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}")
print("[gpu_check] for bench/RESULTS.md:")
print(f"| {datetime.date.today()} | {gpu} | mixtral_proxy_gpu, {layers} layers, seq 4096, GBS {gbs}, bf16 | "
      f"{s['tokens_per_sec']:,.0f} | {s['tflops_per_device']:.1f} | {mfu} | {s['peak_memory_gb']:.1f} |")
EOF
