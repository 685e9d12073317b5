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


def test_kept_clock_adds_every_attempts_seconds_and_survives_a_kill(tmp_path, monkeypatch):
    import json

    from failclosed_interp import stopwatch
    from failclosed_interp.stopwatch import KeptClock

    now = [100.0]
    monkeypatch.setattr(stopwatch.time, "perf_counter", lambda: now[0])
    path = tmp_path / "clock.json"
    with KeptClock(path, every_s=3600.0) as first:
        now[0] += 30.0
    assert first.seconds == 30.0 and json.loads(path.read_text()) == {"seconds": 30.0, "attempts": 1}

    killed = KeptClock(path, every_s=3600.0).__enter__()  # a second attempt, killed: only its periodic writes remain
    now[0] += 12.0
    killed._write()  # what its thread writes every `every_s`
    killed._stop.set()
    assert json.loads(path.read_text()) == {"seconds": 42.0, "attempts": 2}

    with KeptClock(path) as third:
        now[0] += 8.0
        assert third.attempts == 3
    assert json.loads(path.read_text()) == {"seconds": 50.0, "attempts": 3}

    path.write_text("{not json")  # an unreadable record: the clock starts again, it does not fail the job
    with KeptClock(path) as fresh:
        now[0] += 1.0
    assert fresh.seconds == 1.0 and fresh.attempts == 1

    untimed = tmp_path / "started-before-clocks.json"  # a job that ran before without a clock: attempts unknown
    with KeptClock(untimed, untimed_before=True) as resumed:
        now[0] += 5.0
    with KeptClock(untimed) as again:
        now[0] += 5.0
    assert resumed.attempts is None and again.attempts is None and again.seconds == 10.0


def test_kept_clock_writes_while_the_job_runs(tmp_path):
    import json
    import time

    from failclosed_interp.stopwatch import KeptClock

    path = tmp_path / "clock.json"
    with KeptClock(path, every_s=0.01):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and json.loads(path.read_text())["seconds"] == 0.0:
            time.sleep(0.01)
        assert json.loads(path.read_text())["seconds"] > 0.0  # written by the thread, before the block ends
