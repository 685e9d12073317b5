"""`Stopwatch`: each lap measures from the end of the previous one."""

import time

from failclosed_interp.stopwatch import Stopwatch


def test_laps_measure_each_stage_from_the_end_of_the_previous_one(monkeypatch):
    now = iter([10.0, 10.25, 11.0, 13.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(now))
    clock = Stopwatch(digits=1)
    assert clock.lap("load") == 0.2  # 0.25 rounded to one digit (banker's rounding)
    assert clock.lap("train") == 0.8
    assert clock.lap("judge") == 2.5
    assert clock.timings == {"load": 0.2, "train": 0.8, "judge": 2.5} and clock.total == 3.5
