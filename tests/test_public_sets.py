"""The public benchmark sets: read from a data folder the caller names, cut into fixed disjoint halves, and
measured as extra summary columns."""

from __future__ import annotations

import pytest

from failclosed_interp.prompts.public import PUBLIC_SETS, public_prompts, public_set
from failclosed_interp.public_columns import format_public_columns, public_columns
from tests._public_data import write_public_data


@pytest.fixture
def data(tmp_path):
    return write_public_data(tmp_path / "data")


def test_halves_are_disjoint_cover_the_set_and_never_change(data):
    for name in PUBLIC_SETS:
        whole = public_set(data, name, "all")
        val, test = public_set(data, name, "val"), public_set(data, name, "test")
        assert not set(val) & set(test)
        assert sorted([*val, *test]) == sorted(whole)
        assert public_set(data, name, "test") == test
    assert all("safe" in p and "unsafe" not in p for p in public_set(data, "xstest_safe", "all"))


def test_public_prompts_takes_at_most_n(data):
    assert len(public_prompts(data, "advbench", "test", n=2)) == 2
    assert len(public_prompts(data, "advbench", "test", n=None)) == 3


def test_missing_files_and_unknown_names_are_clear_errors(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="advbench_harmful_behaviors.csv.*data folder"):
        public_set(tmp_path / "empty", "advbench")
    with pytest.raises(ValueError, match="unknown public set 'harmbench'"):
        public_set(data, "harmbench")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        public_set(data, "advbench", "train")


def test_public_columns_judge_each_set_on_its_test_half(data, tiny_llama):
    columns = public_columns(tiny_llama, data, n=2, max_new_tokens=4, progress=False)
    assert list(columns) == list(PUBLIC_SETS)
    assert columns["xstest_safe"]["expects"] == "answer" and columns["advbench"]["expects"] == "refusal"
    for column in columns.values():
        assert column["n"] == 2 and column["refusal_rate"]["n"] == 2
        assert 0 <= column["refusal_rate"]["value"] + column["compliance_rate"]["value"] <= 1
    assert "xstest_safe refusal" in format_public_columns(columns)
