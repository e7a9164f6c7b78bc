"""PyTorch CPU matmul GFLOP/s at the square sizes of `fsd3d bench matmul`.

A one-off reference for docs/performance.md: what the CPU itself reaches with
a tuned BLAS, next to what lavapipe reaches with fsd3d's kernels on the same
cores. Same protocol as the Rust bench: warm up, then repeat for about
`--seconds` and report the mean time per product; FLOPs = 2·M·N·K.

    /opt/fsd3d-venv/bin/python tools/bench_torch_cpu.py            # all cores torch sees
    /opt/fsd3d-venv/bin/python tools/bench_torch_cpu.py --threads 2 --json
"""
import argparse
import json
import platform
import time

import torch

SIZES = [256, 512, 1024, 2048]


def measure(n: int, dtype: torch.dtype, seconds: float) -> float:
    """Mean seconds per n×n×n product."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g, dtype=torch.float32).to(dtype) - 0.5
    b = torch.rand(n, n, generator=g, dtype=torch.float32).to(dtype) - 0.5
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    one = max(time.perf_counter() - t0, 1e-6)
    batch = max(1, min(256, int(0.1 / one)))
    iterations = 0
    start = time.perf_counter()
    while iterations == 0 or time.perf_counter() - start < seconds:
        for _ in range(batch):
            torch.mm(a, b, out=out)
        iterations += batch
    return (time.perf_counter() - start) / iterations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per size")
    ap.add_argument("--f16", action="store_true", help="also measure float16 (slow on most CPUs)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [torch.float32] + ([torch.float16] if args.f16 else [])
    if not args.json:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
        print(f"{'shape':<24} {'dtype':<8} {'ms':>10} {'GFLOP/s':>10}")
    for dtype in dtypes:
        for n in SIZES:
            s = measure(n, dtype, args.seconds)
            gflops = 2 * n**3 / s / 1e9
            name = str(dtype).removeprefix("torch.")
            if args.json:
                print(json.dumps({"kernel": "torch.mm", "shape": f"{n}x{n}x{n}", "dtype": name,
                                  "threads": torch.get_num_threads(), "ms": s * 1e3, "gflops": gflops}))
            else:
                print(f"{n}x{n} · {n}x{n}".ljust(24) + f" {name:<8} {s * 1e3:>10.3f} {gflops:>10.2f}")


if __name__ == "__main__":
    main()
