"""Which attention path is faster on this device, by the number of keys: torch's fused
``scaled_dot_product_attention`` against two batched matmuls and a softmax, forward + backward,
on q, k, v sliced from one projection as the backbones make them. ``layers.attention`` uses the
matmul path on the CPU up to ``layers.CPU_MATMUL_MAX_KEYS`` keys; this sweep is where that
threshold comes from. The two paths run in interleaved rounds, so their ratio shares the load.

    python benchmarks/attention.py                  # CPU, 2 threads
    python benchmarks/attention.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import write_results
from einops import rearrange

# (heads, head width, tokens per call): the tiny models at batch 16 of 8 x 8² patches, ViT-B at
# batch 8 of 8 x 14² patches.
WIDTHS = [(3, 32, 8192), (3, 64, 8192), (12, 64, 12544)]
# 8: temporal attention over 8 frames; 17, 65, 197: 4x4, 8x8, 14x14 patches + CLS.
KEYS = [8, 12, 16, 17, 24, 32, 50, 65, 197]


def _fused(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _matmul(q, k, v):
    weights = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights @ v


def _time_ms(fn, x: torch.Tensor, heads: int, device: torch.device) -> float:
    """Forward + backward of one attention call on self-attention over x's tokens."""
    tic = time.perf_counter()
    q, k, v = rearrange(x, "n l (three h e) -> three n h l e", three=3, h=heads)
    out = rearrange(fn(q, k, v), "n h l e -> n l (h e)")
    out.backward(torch.ones_like(out))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for heads, width, tokens in WIDTHS:
        for keys in KEYS:
            x = torch.randn(
                max(1, tokens // keys), keys, 3 * heads * width, device=device, requires_grad=True
            )
            times = {"fused": [], "matmul": []}
            for fn in (_fused, _matmul):  # warm-up
                _time_ms(fn, x, heads, device)
            for _ in range(args.rounds):
                times["fused"].append(_time_ms(_fused, x, heads, device))
                times["matmul"].append(_time_ms(_matmul, x, heads, device))
            fused, matmul = (statistics.median(times[k]) for k in ("fused", "matmul"))
            row = {
                "heads": heads,
                "head_width": width,
                "keys": keys,
                "sequences": x.shape[0],
                "fused_ms": fused,
                "matmul_ms": matmul,
                "matmul_speedup": fused / matmul,
            }
            rows.append(row)
            print(
                f"{heads:2d} heads x {width} wide, {keys:3d} keys, {x.shape[0]:5d} sequences: "
                f"fused {fused:7.2f} ms, matmul {matmul:7.2f} ms (matmul x{fused / matmul:.2f})",
                flush=True,
            )
    on_gpu = device.type == "cuda"
    out = Path(args.out or f"benchmarks/results/attention_{'cuda' if on_gpu else 'cpu'}.json")
    write_results(out, on_gpu=on_gpu, threads=args.threads, rows=rows)


if __name__ == "__main__":
    main()
