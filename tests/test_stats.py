"""Rates get Wilson score intervals (informative at 0/n and n/n), continuous means a bootstrap interval,
and per-seed figures a summary; bad input is refused with a message saying what to give."""

import pytest

from failclosed_interp.stats import RateEstimate, SeedSummary, bootstrap_mean, wilson_rate


def test_wilson_interval_at_all_and_none_is_not_degenerate():
    all_yes = wilson_rate([1] * 20)
    assert all_yes.value == 1.0 and round(all_yes.low, 3) == 0.839 and all_yes.high == pytest.approx(1.0)
    none = wilson_rate([False] * 20)
    assert none.value == 0.0 and none.low == pytest.approx(0.0) and round(none.high, 3) == 0.161
    assert all_yes.interval == "wilson" and all_yes.to_dict()["interval"] == "wilson"


def test_wilson_interval_is_symmetric_at_one_half_and_narrows_with_n():
    half = wilson_rate([1, 0] * 10)
    assert half.value == 0.5 and half.low == pytest.approx(1 - half.high)
    wider, narrower = wilson_rate([1, 0] * 5), wilson_rate([1, 0] * 50)
    assert narrower.high - narrower.low < half.high - half.low < wider.high - wider.low
    assert half.n == 20 and half.per_item == (1.0, 0.0) * 10


def test_wilson_rate_rejects_empty_and_non_binary_input():
    with pytest.raises(ValueError, match="zero items"):
        wilson_rate([])
    with pytest.raises(ValueError, match="0/1 outcomes.*0.5.*bootstrap_mean"):
        wilson_rate([1, 0.5])
    with pytest.raises(ValueError, match="confidence"):
        wilson_rate([1, 0], confidence=1.0)


def test_bootstrap_mean_is_marked_as_bootstrap_and_has_zero_width_on_constant_scores():
    mean = bootstrap_mean([2.0] * 10)
    assert (mean.value, mean.low, mean.high, mean.interval) == (2.0, 2.0, 2.0, "bootstrap")
    assert mean.to_dict()["interval"] == "bootstrap"


def test_rate_estimate_refuses_an_unknown_interval_name():
    with pytest.raises(ValueError, match="interval 'normal'"):
        RateEstimate(0.5, 0.4, 0.6, 10, (), "normal")


def test_seed_summary_reports_values_spread_and_formats():
    summary = SeedSummary((0.85, 0.95, 0.90))
    assert summary.mean == pytest.approx(0.90) and summary.std == pytest.approx(0.05)
    assert (summary.min, summary.max) == (0.85, 0.95)
    assert summary.to_dict() == {"values": [0.85, 0.95, 0.90], "mean": summary.mean, "std": summary.std,
                                 "min": 0.85, "max": 0.95, "n_seeds": 3}
    assert f"{summary}" == "0.90 ± 0.05 (per seed: 0.85, 0.95, 0.90)"
    assert SeedSummary((0.5,)).std == 0.0
    with pytest.raises(ValueError, match="at least one"):
        SeedSummary(())
