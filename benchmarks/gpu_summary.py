"""The GPU run's figures against the speed goals, read from the JSON files ``gpu.sh`` wrote: what a
rented GPU's session needs to read first (a check that did not run says so).

    python benchmarks/gpu_summary.py [RESULTS_FOLDER]    # default benchmarks/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(folder: Path, name: str) -> list[dict] | None:
    path = folder / name
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data.get("rows", data.get("results"))


def _find(rows: list[dict] | None, name: str, reference: str | None = None) -> dict | None:
    """The train-step row of ``name`` (compared with ``reference``), matched on the row's parts."""
    for row in rows or []:
        options = [k for k in ("compile", "grad_checkpointing", "device_flow_labels") if row.get(k)]
        label = " ".join([row["backbone"].split("_")[0], row["losses"], *options])
        if label == name and (reference is None or row.get("reference", "").endswith(reference)):
            return row
    return None


def _spec_share(row: dict) -> str:
    return (
        f"{100 * row['of_spec_peak']:.1f}% of the data sheet's, " if "of_spec_peak" in row else ""
    )


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    lines = []

    def say(goal: str, value: str | None) -> None:
        lines.append(f"  {goal:58s} {value if value is not None else 'not measured'}")

    flow = _rows(folder, "flow_cuda.json")
    torch_448 = next(
        (
            r
            for r in flow or []
            if r["pairs"] == 448 and r["method"].startswith("torch ") and "cpu" not in r["method"]
        ),
        None,
    )
    say(
        "flow labels, 448 pairs: >= 50x OpenCV's one core, 100% labels",
        torch_448
        and f"{torch_448['speedup_vs_opencv_1_core']:.1f}x, "
        f"{100 * torch_448['label_agreement_relative']:.2f}% labels",
    )
    for file, batch in (("train_step_cuda_b32.json", 32), ("train_step_cuda.json", 8)):
        rows = _rows(folder, file)
        baseline = _find(rows, "timesformer baseline")
        say(
            f"TimeSformer ViT-B baseline, batch {batch}: share of bf16 peak",
            baseline
            and f"{_spec_share(baseline)}{100 * baseline['of_matmul_peak']:.1f}% of the measured "
            f"matmul peak ({baseline['step_ms']:.1f} ms/step)",
        )
        device_labels = _find(rows, "timesformer +TIME device_flow_labels", "baseline")
        say(
            f"+TIME with device flow labels, batch {batch}: <= 1.7x baseline",
            device_labels and f"{device_labels['time_ratio']:.2f}x",
        )
    for file, batch in (
        ("train_step_cuda_b32_compile.json", 32),
        ("train_step_cuda_compile.json", 8),
    ):
        rows = _rows(folder, file)
        for losses in ("baseline", "+TIME"):
            compiled = _find(rows, f"timesformer {losses} compile")
            say(
                f"compiled TimeSformer {losses}, batch {batch}: time vs eager",
                compiled and f"{compiled['time_ratio']:.2f}x, {_spec_share(compiled)}".rstrip(", "),
            )
    checkpointed = _find(
        _rows(folder, "train_step_cuda.json"), "motionformer +TIME grad_checkpointing"
    )
    say(
        "Motionformer +TIME checkpointed: memory vs plain (<= 0.5x)",
        checkpointed
        and f"{checkpointed['memory_ratio']:.2f}x memory, {checkpointed['time_ratio']:.2f}x time",
    )
    for row in _rows(folder, "vs_transformers_cuda.json") or [None]:
        batch = f", batch {row['batch']}" if row else ""
        say(
            f"ours vs transformers, bf16, ViT-B{batch}: >= 1.5x",
            row and f"{row['train_speedup']:.2f}x train, {row['infer_speedup']:.2f}x inference",
        )
    print(f"speed goals (issue 18), from {folder}:")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
