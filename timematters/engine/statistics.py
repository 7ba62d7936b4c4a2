"""Confidence intervals for accuracies and gaps: the percentile bootstrap over clips.

Every statistic of an evaluation is a mean over clips of a per-clip value (a hit is 1, a miss 0;
a gap's per-clip value is the original hit minus the perturbed hit). Resampling *clips* with
replacement, the same resample for every statistic, keeps each clip's original and perturbed
outcomes paired, and two models evaluated on the same clips paired with each other: the interval
of a difference then reflects only how the models disagree, not how hard the clips are.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def bootstrap_means(
    values: np.ndarray, *, samples: int = 1000, seed: int = 0, chunk: int = 100
) -> np.ndarray:
    """Means of ``samples`` clip resamples of ``values`` [..., N] (last axis: clips) ->
    [..., samples]. Resamples are drawn ``chunk`` at a time, so memory stays O(chunk x N)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        resample = rng.integers(0, n, size=(count, n))  # [chunk, N]
        means.append(values[..., resample].mean(axis=-1))  # [..., chunk]
    return np.concatenate(means, axis=-1)


def bootstrap_interval(
    values: np.ndarray, *, samples: int = 1000, seed: int = 0, level: float = LEVEL
) -> np.ndarray:
    """The ``level`` percentile interval of the mean of ``values`` [..., N]: [..., 2] (lo, hi).

    NaN when there are no clips (an empty subset) or no resamples were asked for."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] == 0 or samples <= 0:
        return np.full((*values.shape[:-1], 2), np.nan)
    means = bootstrap_means(values, samples=samples, seed=seed)
    tail = (1.0 - level) / 2 * 100
    return np.stack(np.percentile(means, [tail, 100 - tail], axis=-1), axis=-1)


def half_width(interval: tuple[float, float] | list[float] | np.ndarray) -> float:
    """``36.7 ± 4.1``: half the interval's width."""
    lo, hi = interval
    return float(hi - lo) / 2
