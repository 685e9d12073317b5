"""`Stopwatch`: seconds per named stage of a job, for the timings its summary records, and `machine()`:
what those seconds were measured on."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> dict:
    """What a run's figures were measured on (platform, CPUs, threads, torch, GPU)."""
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class Stopwatch:
    """Each `lap(name)` records the seconds since the previous lap (or since the stopwatch was made),
    rounded to `digits`, under `name` in `timings`."""

    def __init__(self, digits: int = 1):
        self.digits = digits
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        """Close the stage `name` and start the next one; returns the stage's seconds."""
        now = time.perf_counter()
        self.timings[name] = seconds = round(now - self._last, self.digits)
        self._last = now
        return seconds

    @property
    def total(self) -> float:
        """The recorded stages' seconds together."""
        return round(sum(self.timings.values()), self.digits)
