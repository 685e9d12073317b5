"""Batch sizes that adapt to memory: on a CUDA out-of-memory error, free the cache, halve the batch
size and run again; the smaller size is kept for the rest of the job. One helper, used by generation,
activation sweeps and training micro-batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA (or other accelerator) allocation failure, as opposed to any other error."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


class AdaptiveBatchSize:
    """`run(fn)` calls `fn(size)`; on out-of-memory it halves `size` and calls again, down to 1.

    `fn` must start from scratch on every call (fresh accumulators, gradients reset), since a failed
    call may have done part of its work."""

    def __init__(self, size: int, what: str = "batch"):
        if size < 1:
            raise ValueError(f"{what} size must be >= 1, got {size}")
        self.size = size
        self.what = what

    def run(self, fn: Callable[[int], T]) -> T:
        while True:
            try:
                return fn(self.size)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                if self.size == 1:
                    raise RuntimeError(
                        f"out of memory with a {self.what} size of 1: use a smaller dtype (dtype bfloat16), shorter "
                        f"prompts or answers, gradient checkpointing for training, or a larger device"
                    ) from err
                del err  # its traceback holds the failed call's tensors
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.size = max(1, self.size // 2)
                log.warning("out of memory: retrying with %s size %d", self.what, self.size)
