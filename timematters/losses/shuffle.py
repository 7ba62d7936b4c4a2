"""Frame permutations and temporal perturbations: one place serves the debias loss, evaluation,
prediction and the diagnostics."""

from __future__ import annotations

import torch


def sample_frame_permutations(
    batch_size: int,
    num_frames: int,
    mode: str = "per_batch",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Permutations of the frame axis, [B, T] (row b: which source frame lands in each slot).

    per_batch (released): one uniformly random permutation for the whole batch; the identity is
    not excluded. per_sample: an independent permutation per clip, redrawn until it is not the
    identity, so every clip is really out of order.
    """
    if mode == "per_batch":
        perm = torch.randperm(num_frames, generator=generator)
        return perm.expand(batch_size, num_frames).clone()
    if mode != "per_sample":
        raise ValueError(f"shuffle mode must be 'per_batch' or 'per_sample', got {mode!r}")
    identity = torch.arange(num_frames)
    perms = []
    for _ in range(batch_size):
        # Each clip draws until it is out of order, so its permutation depends on the clips before
        # it, not on how they are split into batches.
        perm = torch.randperm(num_frames, generator=generator)
        while num_frames > 1 and torch.equal(perm, identity):
            perm = torch.randperm(num_frames, generator=generator)
        perms.append(perm)
    return torch.stack(perms) if perms else identity.expand(0, num_frames).clone()


def shuffle_frames(
    video: torch.Tensor,
    mode: str = "per_batch",
    generator: torch.Generator | None = None,
    perms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the frames of each clip of a video batch [B, C, T, H, W].

    Positions are embedded by slot inside the model, so the shuffled clip carries in-order
    temporal embeddings on out-of-order content. Returns (shuffled video, perms [B, T]).
    """
    B, _, T = video.shape[:3]
    if perms is None:
        perms = sample_frame_permutations(B, T, mode, generator)
    index = perms.to(video.device).view(B, 1, T, *([1] * (video.ndim - 3)))
    return torch.gather(video, 2, index.expand_as(video)), perms


# -- temporal perturbations: what a model knows without the clip's order ------------------------


def reverse_frames(video: torch.Tensor) -> torch.Tensor:
    """The exact time reverse of each clip [B, C, T, ...]: frame t shows frame T-1-t."""
    return video.flip(2)


def freeze_frames(video: torch.Tensor, index: int | None = None) -> torch.Tensor:
    """One frame of each clip repeated T times (the middle one by default): what the model knows
    from a single image."""
    T = video.shape[2]
    index = T // 2 if index is None else index
    if not -T <= index < T:
        raise ValueError(f"frame {index} of a {T}-frame clip")
    return video[:, :, index : index + 1 or None].expand_as(video).contiguous()


def swap_neighbours(video: torch.Tensor) -> torch.Tensor:
    """Each disjoint pair of neighbouring frames (0 1, 2 3, ...) swapped, a last odd frame kept:
    every frame but that last one moves by one place, so only fine order changes."""
    T = video.shape[2]
    order = torch.arange(T)
    pairs = T - T % 2
    order[:pairs] = order[:pairs].view(-1, 2).flip(1).flatten()
    return video.index_select(2, order.to(video.device))


def perturbed_views(
    video: torch.Tensor,
    name: str,
    *,
    perms: torch.Tensor | None = None,
    freeze_frame: int | None = None,
) -> list[torch.Tensor]:
    """``video`` [B, C, T, ...] under perturbation ``name``, as the batches whose outputs,
    averaged, are its: one, or T for freeze_each (each frame repeated in turn). shuffle puts the
    frames in the order ``perms`` [B, T] gives; freeze repeats ``freeze_frame`` (None: the middle
    one)."""
    if name == "shuffle":
        if perms is None:
            raise ValueError("the shuffle perturbation needs perms, the frame order per clip")
        return [shuffle_frames(video, perms=perms)[0]]
    if name == "freeze":
        return [freeze_frames(video, freeze_frame)]
    if name == "freeze_each":
        return [freeze_frames(video, t) for t in range(video.shape[2])]
    if name == "reverse":
        return [reverse_frames(video)]
    if name == "local":
        return [swap_neighbours(video)]
    raise ValueError(f"unknown perturbation {name!r}")
