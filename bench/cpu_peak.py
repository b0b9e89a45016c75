"""Measure this machine's dense-GEMM rate: the CPU 'peak' that MFU on CPU is measured against.

    python bench/cpu_peak.py [--size 1024] [--repeats 20]

Prints GFLOP/s for fp32 and bf16 torch.matmul with torch's default threads; put the figures in
conf/hardware/cpu.yaml (peak_flops_fp32 / peak_flops_bf16).
"""

import argparse
import time

import torch


def gemm_rate(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}, matmul {args.size}^3")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"{str(dtype):16s} {gemm_rate(dtype, args.size, args.repeats) / 1e9:8.1f} GFLOP/s")


if __name__ == "__main__":
    main()
