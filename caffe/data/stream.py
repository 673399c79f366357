"""Batches of a net's data layers by batch index: ``Stream`` (one source, loaded ahead by
DataLoader workers, sharded by rank/world: batch b of process r of w holds stream positions
(b*w + r)*B ... (b*w + r + 1)*B - 1) and ``NetFeed`` (every data layer of a Net as one feed).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import CaffeError
from . import layer_source


class _Batches(torch.utils.data.Sampler):
    """Positions of batches ``start, start + 1, ...`` for process ``rank`` of ``world``."""

    def __init__(self, start: int, batch: int, rank: int, world: int):
        self.start, self.batch, self.rank, self.world = start, batch, rank, world

    def __iter__(self):
        b = self.start
        while True:
            first = (b * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))
            b += 1


def _collate(items):
    for it in items:
        if isinstance(it, CaffeError):
            return it
    shapes = {it[0].shape for it in items}
    if len(shapes) > 1:
        where = ", ".join(f"{it[-1]} {it[0].shape[1]}x{it[0].shape[2]}" for it in items)
        return CaffeError(f"images of one batch differ in size and no crop_size is set ({where})")
    # an item is (one array per top, ..., where): caffe.data.sources' sources too
    return tuple(torch.from_numpy(np.stack([it[k] for it in items])) for k in range(len(items[0]) - 1))


class Stream:
    """Batches of one data source by batch index, loaded ahead by DataLoader workers.

    ``stream(b)`` returns {top: tensor}; asking for batch b+1 after b reuses the running
    loader, any other index restarts it there.
    """

    def __init__(self, source, rank: int = 0, world: int = 1, workers: int = 0,
                 pin_memory: bool = False):
        self.source, self.rank, self.world = source, rank, world
        self.workers, self.pin = workers, pin_memory
        self._it, self._next = None, None

    def _start(self, b: int) -> None:
        loader = DataLoader(self.source, batch_sampler=_Batches(b, self.source.batch_size, self.rank, self.world),
                            num_workers=self.workers, collate_fn=_collate, pin_memory=self.pin,
                            prefetch_factor=4 if self.workers else None, persistent_workers=False)
        self._it, self._next = iter(loader), b

    def __call__(self, b: int) -> dict[str, torch.Tensor]:
        if self._it is None or b != self._next:
            self.close()
            self._start(b)
        batch = next(self._it)
        self._next = b + 1
        if isinstance(batch, CaffeError):
            self.close()
            raise batch
        return dict(zip(self.source.tops, batch))

    def close(self) -> None:
        """Stop the loader's workers."""
        if self._it is not None:
            shutdown = getattr(self._it, "_shutdown_workers", None)
            if shutdown:
                shutdown()
        self._it = None


class NetFeed:
    """All data layers of a Net as one feed: ``feed(b)`` -> {top: tensor}."""

    def __init__(self, net, seed: int = 0, rank: int = 0, world: int = 1, workers: int = 0,
                 pin_memory: bool = False):
        phase = "TRAIN" if net.phase == 0 else "TEST"
        self.streams = []
        for layer in net.layers:
            if layer.is_data:
                src = layer_source(layer, phase, seed, net)
                # a LevelDB opens in one process only: its records are read here, not in workers
                in_process = getattr(getattr(src, "db", None), "in_process", False)
                self.streams.append(Stream(src, rank, world, 0 if in_process else workers, pin_memory))
        if not self.streams:
            raise CaffeError(f"net {net.name!r} ({phase}) has no data layer (ImageSegData, Data, ImageData, "
                             "HDF5Data, WindowData or DenseImageData) to read data from")

    def __call__(self, b: int) -> dict[str, torch.Tensor]:
        out = {}
        for s in self.streams:
            out.update(s(b))
        return out

    def close(self) -> None:
        """Stop every stream's workers."""
        for s in self.streams:
            s.close()


# Layers that pass a label through unchanged in value (shape aside) and those that read it as
# class indices against a score blob (bottom 0, classes on axis 1).
