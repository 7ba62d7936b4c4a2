"""timematters: TIME (temporal self-supervision for video transformers) and diagnostics that tell
whether any video model uses time.

The Python API, model-first:

- ``load_model(spec, cfg=None)``: a timematters checkpoint, ``hf:DIR_OR_HUB_ID``,
  ``torchvision:NAME[:WEIGHTS]`` or ``pkg.module:factory``, as a module that honours the
  backbone protocol;
- ``evaluate(model, loader, classes=..., subsets=...)``: top-1 / top-5 on original and
  frame-shuffled clips and the gap, per subset;
- ``diagnose(models, data, out)``: the whole report (shuffle test, confidence gap, per-block
  order probe, GradCAM) for ``{name: model}``;
- ``export(checkpoint, out)``: a trained model as a transformers folder or safetensors weights.

``loader`` / ``data`` is a dataset, a DataLoader of dict batches, or one of ``(video, label)``
pairs, clips ``[B, C, T, H, W]``. Heavy modules load on first use, so ``import timematters`` is quick.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "timematters.engine.model",
    "evaluate": "timematters.engine.evaluate",
    "diagnose": "timematters.diagnostics.report",
    "export": "timematters.engine.export",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'timematters' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy API shows in dir() and tab completion
    return sorted(__all__)


__all__ = ["__version__", "diagnose", "evaluate", "export", "load_model"]
