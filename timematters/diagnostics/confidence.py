"""Confidence gap between original and frame-shuffled clips (paper Sec. 3.2, Fig. 1c).

Per clip: the softmax confidence in the true class on the original clip minus that on the same clip
with its frames shuffled (``EvalResult.confidence_gap``, from the one evaluation in
``engine/evaluate.py``). A model that ignores frame order has every gap at 0; a model that uses
time loses confidence on shuffled clips, pushing mass to the right. Summarised as a 20-bin
probability-mass histogram over [-1, 1], per subset.
"""

from __future__ import annotations

import numpy as np

from timematters.engine.evaluate import EvalResult

NUM_BINS = 20


def gap_histogram(gaps: np.ndarray, num_bins: int = NUM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Probability mass of ``gaps`` in ``num_bins`` equal bins over [-1, 1]: (mass, edges).

    Bins are half-open [a, b) except the last, so a gap of 0 falls in the bin [0, b). Gaps are
    first rounded to 1e-6: an order-blind model's float noise (|gap| ~ 1e-8) then counts as 0
    instead of straddling the edge at 0.
    """
    counts, edges = np.histogram(np.round(gaps, 6), bins=num_bins, range=(-1.0, 1.0))
    return counts / max(len(gaps), 1), edges


def confidence_gaps(
    result: EvalResult, num_bins: int = NUM_BINS, perturbation: str | None = None
) -> dict[str, dict]:
    """Per subset (``all`` and the dataset's subsets): the gap histogram and its summary, under
    ``perturbation`` (default: the evaluation's first, the paper's shuffle by default).

    A clip whose confidences are not finite (NaN logits) has no gap: it is left out of the mean,
    the median and the histogram, and counted in ``num_left_out`` (its accuracy counts a miss).
    """
    gaps = result.confidence_gap(perturbation or next(iter(result.perturbed)))
    finite = np.isfinite(gaps)
    out = {}
    for subset, mask in result.subset_masks().items():
        kept = gaps[mask & finite]
        mass, edges = gap_histogram(kept, num_bins)
        out[subset] = {
            "mean": float(kept.mean()) if len(kept) else float("nan"),
            "median": float(np.median(kept)) if len(kept) else float("nan"),
            "num_clips": len(kept),
            "num_left_out": int((mask & ~finite).sum()),
            "edges": edges.tolist(),
            "mass": mass.tolist(),
        }
    return out
