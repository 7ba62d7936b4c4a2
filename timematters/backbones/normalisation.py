"""The normalisation a model takes its clips in, and the conversion from the one they come in.

Every model, ours or adapted, has ``mean`` / ``std``: the normalisation it was trained with (ours:
the run's ``data.mean`` / ``data.std``; a foreign model: its own processor's). Clips come
normalised as the data says, ``input_mean`` / ``input_std`` (told by
``set_input_normalisation``); ``forward_features`` converts them first (``renormalise``), which is
free when the two agree, as they do in training. So a model trained on ImageNet-normalised clips
scores clips normalised with 0.5 / 0.5 correctly, and several models of different normalisations
are compared on the same clips.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import torch

DEFAULT_INPUT = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# The clips' normalisation inside a ``clips_normalised`` block, the default outside one.
_GIVEN = contextvars.ContextVar("clips_normalisation", default=DEFAULT_INPUT)


def given_normalisation() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the clips come in here: a ``clips_normalised`` block's, else 0.5 / 0.5."""
    return _GIVEN.get()


def declared_normalisation(
    model: object, default: tuple[tuple[float, ...], tuple[float, ...]] = DEFAULT_INPUT
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``mean`` / ``std`` a model declares it takes its clips in, as float tuples: a sequence,
    a tensor (a buffer, of any shape) or one number for every channel; ``default`` where it
    declares none. Not the statistics a model that normalises raw pixels itself applies inside:
    those it must name otherwise, or the clips would be normalised twice."""
    declared = []
    for name, fallback in zip(("mean", "std"), default, strict=True):
        value = getattr(model, name, fallback)
        if isinstance(value, torch.Tensor):
            value = value.detach().flatten().tolist()
        elif isinstance(value, int | float):
            value = [value]
        try:
            floats = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            floats = ()
        if len(floats) == 1:
            floats *= 3
        if len(floats) != 3:
            raise ValueError(
                f"{type(model).__name__}.{name} is {value!r}; timematters reads it as the "
                f"normalisation the model takes its clips in: three numbers (one per channel), "
                f"or rename the attribute when the model applies it to raw pixels itself"
            )
        declared.append(floats)
    return declared[0], declared[1]


class InputNormalisation:
    """``mean`` / ``std`` the model takes, ``input_mean`` / ``input_std`` the clips come in."""

    mean: tuple[float, ...] = DEFAULT_INPUT[0]
    std: tuple[float, ...] = DEFAULT_INPUT[1]
    input_mean: tuple[float, ...] = DEFAULT_INPUT[0]
    input_std: tuple[float, ...] = DEFAULT_INPUT[1]

    def set_input_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """The normalisation the clips arrive in (the dataset's)."""
        self.input_mean, self.input_std = tuple(mean), tuple(std)

    def renormalise(self, video: torch.Tensor) -> torch.Tensor:
        """Clips [B, C, ...] normalised with the input's mean / std -> with the model's own."""
        if (tuple(self.input_mean), tuple(self.input_std)) == (tuple(self.mean), tuple(self.std)):
            return video
        shape = (1, len(self.mean), *([1] * (video.ndim - 2)))
        like = {"dtype": video.dtype, "device": video.device}
        mean, std = torch.tensor(self.mean, **like), torch.tensor(self.std, **like)
        scale = torch.tensor(self.input_std, **like) / std
        shift = (torch.tensor(self.input_mean, **like) - mean) / std
        return video * scale.view(shape) + shift.view(shape)


def check_normalisation(
    model: object, mean: tuple[float, ...], std: tuple[float, ...], *, name: str
) -> None:
    """Refuse a model that wants its clips normalised otherwise than they come (its ``mean`` /
    ``std``) and has no ``set_input_normalisation`` to be told so and convert them: it would be
    scored on clips it does not expect, silently."""
    if hasattr(model, "set_input_normalisation"):
        return
    wants = declared_normalisation(model, (tuple(mean), tuple(std)))
    if wants != (tuple(mean), tuple(std)):
        raise ValueError(
            f"{name} takes clips normalised with mean {wants[0]}, std {wants[1]}, but they come "
            f"normalised with mean {tuple(mean)}, std {tuple(std)}, and it cannot convert them: "
            "inherit timematters.backbones.InputNormalisation and begin forward_features with "
            "video = self.renormalise(video), or normalise the data as it wants (data.mean, "
            "data.std)"
        )


@contextlib.contextmanager
def clips_normalised(
    models: Mapping[str, object], mean: Sequence[float] | None, std: Sequence[float] | None
) -> Iterator[None]:
    """The models (name -> model) told the clips' normalisation (None: the default 0.5 / 0.5) for
    the ``with`` block, then what they were told before: a model passed in is scored on these
    clips without being changed for later use. One that cannot convert them is refused."""
    given = (tuple(mean), tuple(std)) if mean is not None else DEFAULT_INPUT
    for name, model in models.items():
        check_normalisation(model, *given, name=name)
    told = {
        name: (model.input_mean, model.input_std)
        for name, model in models.items()
        if mean is not None and hasattr(model, "set_input_normalisation")
    }
    for name in told:
        models[name].set_input_normalisation(*given)
    token = _GIVEN.set(given)
    try:
        yield
    finally:
        _GIVEN.reset(token)
        for name, (before_mean, before_std) in told.items():
            models[name].set_input_normalisation(before_mean, before_std)
