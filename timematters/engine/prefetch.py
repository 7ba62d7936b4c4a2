"""Flow labels off the training step's critical path (``flow.backend=torch``).

The torch Farnebäck labels a batch on the training device. Made inside the step, its many small
kernels run between two optimizer steps and the step waits for them. ``FlowLabelPrefetcher``
makes the labels of batch i + 1 while step i runs: a background thread fetches the next batch,
moves it to the device and labels it, on CUDA on a side stream of its own, so the labeller's
launches and kernels overlap the step's. The labels are the same tensors either way (the
Farnebäck draws no random numbers), so a run's losses do not change.

On the CPU the labeller and the step would share the same cores, so by default the labels are
made in line there, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from timematters.data.collate import batch_size
from timematters.flow.labeller import FlowLabeller

Batch = dict[str, Any]
_END = object()


class FlowLabelPrefetcher:
    """``batches`` on ``device`` with ``batch["flow_labels"]`` from ``labeller``, one batch ahead.

    background: label in a background thread while the consumer works (None: on CUDA only).
    A batch without good videos passes through unlabelled (the step skips it).
    """

    def __init__(
        self,
        batches: Iterable[Batch],
        labeller: FlowLabeller,
        device: torch.device,
        *,
        background: bool | None = None,
    ):
        self.batches = batches
        self.labeller = labeller
        self.device = device
        self.background = device.type == "cuda" if background is None else background
        self.stream = (
            torch.cuda.Stream(device) if self.background and device.type == "cuda" else None
        )

    def __iter__(self) -> Iterator[Batch]:
        if not self.background:
            for batch in self.batches:
                yield self._labelled(batch)
            return
        batches = iter(self.batches)
        with ThreadPoolExecutor(1, thread_name_prefix="flow-labels") as pool:
            pending = pool.submit(self._next_labelled, batches)
            while (ready := pending.result()) is not _END:
                pending = pool.submit(self._next_labelled, batches)
                yield self._handed_over(*ready)

    def _next_labelled(self, batches: Iterator[Batch]):
        batch = next(batches, _END)
        if batch is _END:
            return _END
        if self.stream is None:
            return self._labelled(batch), None
        # A new thread starts on CUDA device 0: set this run's device (and the side stream) here.
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            batch = self._labelled(batch)
            done = torch.cuda.Event()
            done.record(self.stream)
        return batch, done

    def _labelled(self, batch: Batch) -> Batch:
        batch = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        if batch_size(batch) > 0:
            batch["flow_labels"] = self.labeller.batch(batch["video"])
        return batch

    def _handed_over(self, batch: Batch, done: torch.cuda.Event | None) -> Batch:
        """The batch, usable on the consumer's stream: it waits for the side stream's work, and the
        allocator learns the tensors are used there (so it does not reuse their memory early)."""
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    value.record_stream(stream)
        return batch
