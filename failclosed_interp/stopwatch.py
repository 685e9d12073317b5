"""`Stopwatch`: seconds per named stage of a job, for the timings its summary records; `KeptClock`: the
seconds a resumable job has run over all its attempts; and `machine()`: what those seconds were measured on."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import torch

from failclosed_interp.artifacts import read_json, write_json


def machine() -> dict:
    """What a run's figures were measured on (platform, CPUs, threads, torch, GPU), and the 1-minute load average
    when asked (other work on the machine lengthens the timings: ask at the start of the timed work)."""
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": round(os.getloadavg()[0], 1)}


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


class KeptClock:
    """The seconds a job has run over all its attempts: those an earlier attempt recorded in `path` plus this
    one's, written back to `path` (atomically) every `every_s` seconds by a daemon thread and when the block
    ends, so that a killed attempt loses at most `every_s` of them. Use as a context manager; `seconds` and
    `attempts` (this one included) read it at any time. `untimed_before`: the job ran before without a clock
    (e.g. under a version that had none); when `path` holds no record then, `attempts` is None from then on,
    as the seconds miss those runs."""

    def __init__(self, path: str | os.PathLike, every_s: float = 60.0, *, untimed_before: bool = False):
        self.path, self.every_s, self.untimed_before = Path(path), every_s, untimed_before
        self._before, self.attempts, self._start = 0.0, 1, time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> KeptClock:
        saved = _read_clock(self.path)
        if saved is None:
            self._before, self.attempts = 0.0, None if self.untimed_before else 1
        else:
            self._before, self.attempts = saved["seconds"], None if saved["attempts"] is None else saved["attempts"] + 1
        self._start = time.perf_counter()
        self._write()
        self._thread = threading.Thread(target=self._tick, name="kept-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write()

    @property
    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._start

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write()

    def _write(self) -> None:
        write_json(self.path, {"seconds": round(self.seconds, 1), "attempts": self.attempts})


def _read_clock(path: Path) -> dict | None:
    """What an earlier attempt recorded; None when there is no readable record."""
    try:
        saved = read_json(path)
        attempts = saved["attempts"]
        return {"seconds": float(saved["seconds"]), "attempts": None if attempts is None else int(attempts)}
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None
