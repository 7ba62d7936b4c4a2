"""Our TimeSformer against Hugging Face ``transformers``' port, side by side: the same config and
the same weights (loaded into ours through our converter; logits checked equal), a training step
(forward, backward, AdamW) and inference, clips/s and peak memory, at several sizes.

Speed: both models live in one process and run in interleaved rounds, so the ratio compares them
under the same load. Memory: each model measures its own peak in a fresh process (CUDA:
``max_memory_allocated``; CPU: the growth of the resident set over the steps).

    python benchmarks/vs_transformers.py                 # three CPU sizes, fp32
    python benchmarks/vs_transformers.py --device cuda   # ViT-B/16, 8 x 224², bf16, batch 8 and 32
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    count_flops,
    matmul_peak_tflops,
    peak_memory_mib,
    spawned_process,
    timed,
    write_results,
)

# (name, image size, patch, width, depth, heads, batch); 8 frames, 174 classes throughout.
CPU_SIZES = [
    ("64², patch 8, D 96, depth 4", 64, 8, 96, 4, 3, 16),
    ("64², patch 16, D 192, depth 6", 64, 16, 192, 6, 3, 16),
    ("112², patch 16, D 192, depth 4", 112, 16, 192, 4, 3, 8),
]
GPU_SIZES = [
    ("224², patch 16, ViT-B", 224, 16, 768, 12, 12, 8),
    ("224², patch 16, ViT-B", 224, 16, 768, 12, 12, 32),
]
FRAMES, CLASSES = 8, 174


def _models(size: tuple, device: torch.device):
    """HF's TimesformerForVideoClassification and ours with the same weights, train mode."""
    import transformers

    from timematters.backbones.pretrained import load_pretrained
    from timematters.backbones.timesformer import TimeSformer

    transformers.logging.set_verbosity_error()
    _, img, patch, width, depth, heads, _ = size
    torch.manual_seed(0)
    config = transformers.TimesformerConfig(
        image_size=img,
        patch_size=patch,
        num_frames=FRAMES,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0,  # transformers 5 types it as an int
        layer_norm_eps=1e-6,
        num_labels=CLASSES,
        attention_type="divided_space_time",
    )
    theirs = transformers.TimesformerForVideoClassification(config)
    ours = TimeSformer(
        num_classes=CLASSES,
        num_frames=FRAMES,
        img_size=img,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        drop_path_rate=0.0,
    )
    load_pretrained(ours, theirs.state_dict())
    return ours.to(device), theirs.to(device)


def _steps(model, kind: str, video, labels, amp):
    """A train step (or an inference pass) of one of the two models, as a closure."""
    pixel_values = video.permute(0, 2, 1, 3, 4)  # HF takes [B, T, C, H, W]
    is_ours = kind == "ours"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def logits():
        with torch.autocast(video.device.type, dtype=amp, enabled=amp is not None):
            return model(video) if is_ours else model(pixel_values=pixel_values).logits

    def train():
        F.cross_entropy(logits().float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer():
        logits()

    return train, infer


def _speed(size: tuple, device_name: str, rounds: int, per_round: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    amp = torch.bfloat16 if device.type == "cuda" else None
    ours, theirs = _models(size, device)
    batch = size[-1]
    video = torch.randn(batch, 3, FRAMES, size[1], size[1], device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    with torch.no_grad():
        difference = (
            (ours.eval()(video) - theirs.eval()(pixel_values=video.permute(0, 2, 1, 3, 4)).logits)
            .abs()
            .max()
            .item()
        )
    ours.train(), theirs.train()
    fns = {
        "ours": _steps(ours, "ours", video, labels, amp),
        "theirs": _steps(theirs, "theirs", video, labels, amp),
    }
    times = {(k, m): [] for k in fns for m in ("train", "infer")}
    for train, infer in fns.values():  # warm-up
        train(), infer()
    for _ in range(rounds):
        for k, (train, infer) in fns.items():
            for _ in range(per_round):
                times[(k, "train")].append(timed(train, device))
                times[(k, "infer")].append(timed(infer, device))
    medians = {f"{k}_{m}_s": statistics.median(v) for (k, m), v in times.items()}
    _, by_op = count_flops(fns["ours"][0])
    # The products of the linear layers and the patch embedding, which both models compute alike
    # and which take most of the step: the ceiling for any implementation with equal outputs.
    linear = ("mm", "addmm", "convolution", "convolution_backward")
    return {
        "max_abs_logit_difference": difference,
        **medians,
        "gflop_per_step": sum(by_op.values()) / 1e9,
        "linear_gflop_per_step": sum(by_op.get(op, 0.0) for op in linear) / 1e9,
        "matmul_peak_gflop_per_s": 1000 * matmul_peak_tflops(device, amp or torch.float),
    }


def _memory(size: tuple, device_name: str, kind: str, threads: int) -> float:
    """Peak memory (MiB) of three training steps of one model, in this (fresh) process."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    amp = torch.bfloat16 if device.type == "cuda" else None
    model = _models(size, device)[0 if kind == "ours" else 1].train()  # the other one is freed
    batch = size[-1]
    video = torch.randn(batch, 3, FRAMES, size[1], size[1], device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    train, _ = _steps(model, kind, video, labels, amp)
    return peak_memory_mib(lambda: [train() for _ in range(3)], device)


def _in_fresh_process(fn, *args):
    with spawned_process() as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=3, help="steps per model and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sizes", choices=("cpu", "gpu"), default=None, help="default: the device's"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import transformers

    on_gpu = args.device.startswith("cuda")
    sizes = GPU_SIZES if (args.sizes or ("gpu" if on_gpu else "cpu")) == "gpu" else CPU_SIZES
    out = Path(args.out or f"benchmarks/results/vs_transformers_{'cuda' if on_gpu else 'cpu'}.json")
    setting = {
        "threads": args.threads,
        "transformers": transformers.__version__,
        "precision": "bf16" if on_gpu else "fp32",
    }
    rows = []
    for size in sizes:
        speed = _in_fresh_process(
            _speed, size, args.device, args.rounds, args.per_round, args.threads
        )
        memory = {
            k: _in_fresh_process(_memory, size, args.device, k, args.threads)
            for k in ("ours", "theirs")
        }
        batch = size[-1]
        row = {
            "config": size[0],
            "batch": batch,
            **speed,
            "ours_train_clips_per_s": batch / speed["ours_train_s"],
            "theirs_train_clips_per_s": batch / speed["theirs_train_s"],
            "ours_infer_clips_per_s": batch / speed["ours_infer_s"],
            "theirs_infer_clips_per_s": batch / speed["theirs_infer_s"],
            "train_speedup": speed["theirs_train_s"] / speed["ours_train_s"],
            # The step's time if its linear layers ran at the peak and nothing else took time.
            "linear_at_peak_s": speed["linear_gflop_per_step"] / speed["matmul_peak_gflop_per_s"],
            "infer_speedup": speed["theirs_infer_s"] / speed["ours_infer_s"],
            "ours_train_tflop_per_s": speed["gflop_per_step"] / speed["ours_train_s"] / 1000,
            "ours_peak_mib": memory["ours"],
            "theirs_peak_mib": memory["theirs"],
        }
        rows.append(row)
        write_results(out, on_gpu=on_gpu, quiet=True, **setting, rows=rows)
        print(
            f"{row['config']:32s} batch {batch:2d}: train {row['ours_train_clips_per_s']:6.1f} vs "
            f"{row['theirs_train_clips_per_s']:6.1f} clips/s (x{row['train_speedup']:.2f}), "
            f"inference x{row['infer_speedup']:.2f}, peak {row['ours_peak_mib']:.0f} vs "
            f"{row['theirs_peak_mib']:.0f} MiB, |logit diff| {row['max_abs_logit_difference']:.1e}; "
            f"linear layers at the matmul peak: {1000 * row['linear_at_peak_s']:.0f} ms of ours "
            f"{1000 * row['ours_train_s']:.0f}, theirs {1000 * row['theirs_train_s']:.0f} ms; ours "
            f"{row['ours_train_tflop_per_s']:.2f} TFLOP/s of {row['gflop_per_step']:.0f} GFLOP",
            flush=True,
        )
    write_results(out, on_gpu=on_gpu, **setting, rows=rows)


if __name__ == "__main__":
    main()
