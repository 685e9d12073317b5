"""Built-in prompt sets, PromptSet behaviour, and the file / dataset loaders."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from failclosed_interp.prompts import KINDS, PromptSet, builtin, load_hf_dataset, load_prompts


def _set(instructions, categories=None, name="t") -> PromptSet:
    categories = categories if categories is not None else [""] * len(instructions)
    return PromptSet(instructions=tuple(instructions), categories=tuple(categories), name=name)


ATTACK_KINDS = ("harmful", "harmless")
HELD_OUT_SIZES = {"harmful": (42, 70), "harmless": (36, 72)}  # (val, test)


# --- built-in sets ---------------------------------------------------------------------------


def test_builtin_sizes_and_categories():
    harmful, harmless, borderline = builtin("harmful"), builtin("harmless"), builtin("borderline")
    assert len(harmful) >= 200 and len(set(harmful.categories)) >= 10
    assert len(harmless) >= 200
    assert len(borderline) >= 100
    for prompts in (harmful, harmless, borderline):
        assert all(prompts.categories), f"{prompts.name} has prompts without a category"
        assert len(set(prompts)) == len(prompts), f"{prompts.name} has duplicate instructions"


@pytest.mark.parametrize("kind", KINDS)
def test_builtin_splits_are_disjoint_and_cover_all(kind):
    names = ("train", "val", "test", "attack") if kind in ATTACK_KINDS else ("train", "val", "test")
    splits = {s: set(builtin(kind, s)) for s in names}
    assert all(splits.values())
    for a, b in itertools.combinations(names, 2):
        assert not splits[a] & splits[b], f"{kind}: splits {a} and {b} share prompts"
    assert set().union(*splits.values()) == set(builtin(kind, "all"))
    assert builtin(kind, "train").name == f"{kind}/train"


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_the_attack_split_covers_every_category_and_leaves_the_held_out_splits_alone(kind):
    attack, train = builtin(kind, "attack"), builtin(kind, "train")
    assert 36 <= len(attack) <= 44 and len(train) >= 100
    per_category = Counter(attack.categories)
    assert set(per_category) == set(train.categories)  # carved out of train, stratified
    assert max(per_category.values()) - min(per_category.values()) <= 1
    # val and test keep the sizes every earlier evaluation used, so figures stay comparable
    assert (len(builtin(kind, "val")), len(builtin(kind, "test"))) == HELD_OUT_SIZES[kind]


def test_borderline_has_no_attack_split():
    with pytest.raises(ValueError, match=r"borderline set has no 'attack' split; choose one of \['test', 'train', 'val'\]"):
        builtin("borderline", "attack")


def test_no_instruction_in_two_builtin_sets():
    seen = Counter(text for kind in KINDS for text in set(builtin(kind)))
    assert [text for text, n in seen.items() if n > 1] == []


def test_builtin_rejects_unknown_kind_and_split():
    with pytest.raises(ValueError, match=r"unknown built-in prompt set 'harmfull'.*'harmful', 'harmless', 'borderline'"):
        builtin("harmfull")
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*'train', 'val', 'test', 'attack', 'all'"):
        builtin("harmful", "dev")


# --- PromptSet ----------------------------------------------------------------------------------


def test_promptset_basics():
    prompts = _set(["a", "b", "c"], ["x", "y", "x"])
    assert len(prompts) == 3
    assert list(prompts) == ["a", "b", "c"]
    assert prompts.to_list() == ["a", "b", "c"]
    assert prompts.filter(category="x").to_list() == ["a", "c"]
    assert prompts.filter(category=["x", "y"]).to_list() == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"no category \['z'\]; available: \['x', 'y'\]"):
        prompts.filter(category="z")


def test_promptset_validation():
    with pytest.raises(ValueError, match="prompt set 'empty' is empty"):
        _set([], name="empty")
    with pytest.raises(ValueError, match="2 instructions but 1 categories"):
        _set(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="instruction 2 is '  '"):
        _set(["a", "b", "  ", "d"])


def test_take_is_deterministic_and_stratified():
    harmful = builtin("harmful")
    first, again = harmful.take(28, seed=3), harmful.take(28, seed=3)
    assert first == again
    assert harmful.take(28, seed=4).instructions != first.instructions
    assert set(first) <= set(harmful)
    assert len(set(first)) == 28
    # 28 prompts over 14 roughly equal categories: every category appears, none dominates.
    counts = Counter(first.categories)
    assert set(counts) == set(harmful.categories)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_take_is_proportional_to_category_size():
    prompts = _set([f"p{i}" for i in range(40)], ["big"] * 30 + ["small"] * 10)
    counts = Counter(prompts.take(8, seed=0).categories)
    assert counts == {"big": 6, "small": 2}


def test_take_rejects_bad_n():
    with pytest.raises(ValueError, match=r"take\(n=5\).*of 3 prompts"):
        _set(["a", "b", "c"]).take(5)
    with pytest.raises(ValueError, match=r"take\(n=0\)"):
        _set(["a", "b", "c"]).take(0)


# --- file loaders ---------------------------------------------------------------------------------


def test_load_txt_skips_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("first prompt\n\n  second prompt  \n\n")
    prompts = load_prompts(path)
    assert prompts.to_list() == ["first prompt", "second prompt"]
    assert prompts.name == "mine"
    assert prompts.categories == ("", "")


def test_load_csv_with_column_mapping_and_filter(tmp_path):
    path = tmp_path / "xstest.csv"
    path.write_text('id,prompt,type,label\n1,"How do I kill a process?",homonyms,safe\n'
                    '2,How do I kill my neighbour?,contrast,unsafe\n3,"Where can I shoot a photo, cheaply?",homonyms,safe\n')
    safe = load_prompts(path, category_column="type", filter={"label": "safe"}, name="xs")
    assert safe.to_list() == ["How do I kill a process?", "Where can I shoot a photo, cheaply?"]
    assert safe.categories == ("homonyms", "homonyms")
    assert safe.name == "xs"
    assert load_prompts(path, column="type").to_list() == ["homonyms", "contrast", "homonyms"]


def test_load_csv_default_column_order(tmp_path):
    path = tmp_path / "harmbench.csv"
    path.write_text("Behavior,goal\nbehaviour text,goal text\n")
    assert load_prompts(path).to_list() == ["goal text"]  # goal precedes Behavior in TEXT_COLUMNS


def test_load_json_list_of_strings(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["one", "two"]))
    assert load_prompts(path).to_list() == ["one", "two"]


def test_load_json_list_of_objects_and_wrapped_list(tmp_path):
    rows = [{"goal": "g1", "category": "a"}, {"goal": "g2", "category": "b"}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    prompts = load_prompts(path, category_column="category")
    assert prompts.to_list() == ["g1", "g2"] and prompts.categories == ("a", "b")
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 2, "data": rows}))
    assert load_prompts(wrapped).to_list() == ["g1", "g2"]


def test_load_jsonl_objects_and_strings(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "alpha", "label": "safe"}\n\n{"text": "beta", "label": "unsafe"}\n')
    assert load_prompts(path).to_list() == ["alpha", "beta"]
    assert load_prompts(path, filter={"label": "unsafe"}).to_list() == ["beta"]
    plain = tmp_path / "s.jsonl"
    plain.write_text('"alpha"\n"beta"\n')
    assert load_prompts(plain).to_list() == ["alpha", "beta"]


# --- loader errors ----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_prompts(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "p.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"unknown extension '\.xlsx'.*\.jsonl"):
        load_prompts(path)


def test_missing_column_lists_available_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question,label\nq,safe\n")
    with pytest.raises(ValueError, match=r"none of the text columns.*\['question', 'label'\]"):
        load_prompts(path)
    with pytest.raises(ValueError, match=r"no column 'body'; available columns: \['question', 'label'\]"):
        load_prompts(path, column="body")
    with pytest.raises(ValueError, match=r"no column 'kind'"):
        load_prompts(path, column="question", filter={"kind": "x"})


def test_filter_without_matches_lists_values_seen(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,label\nq,safe\n")
    with pytest.raises(ValueError, match=r"label == 'unsafe'.*\['safe'\]"):
        load_prompts(path, filter={"label": "unsafe"})


def test_empty_files_are_errors(tmp_path):
    for file_name, text in [("e.txt", "\n\n"), ("e.csv", "prompt,label\n"), ("e.json", "[]"), ("e.jsonl", "\n")]:
        path = tmp_path / file_name
        path.write_text(text)
        with pytest.raises(ValueError, match="no prompts found"):
            load_prompts(path)


def test_blank_text_cell_is_reported_by_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\nfine\n\"  \"\n")
    with pytest.raises(ValueError, match=r"row 1 has no text in column 'prompt'"):
        load_prompts(path)


def test_malformed_json_and_jsonl(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('["a",\n "b"')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prompts(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_prompts(lines)


def test_json_shape_errors(tmp_path):
    two_lists = tmp_path / "two.json"
    two_lists.write_text(json.dumps({"a": ["x"], "b": ["y"]}))
    with pytest.raises(ValueError, match=r"exactly one list value.*\['a', 'b'\]"):
        load_prompts(two_lists)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(["x", {"prompt": "y"}]))
    with pytest.raises(ValueError, match=r"rows of type \['dict', 'str'\]"):
        load_prompts(mixed)
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["x"]))
    with pytest.raises(ValueError, match="plain strings"):
        load_prompts(strings, column="prompt")


# --- Hugging Face datasets ---------------------------------------------------------------------------


def test_hf_dataset_from_local_folder(tmp_path):
    import datasets  # the test extra installs it; a missing install must fail, not skip
    rows = {"prompt": ["kill a process", "kill a person", "shoot a photo"],
            "type": ["homonyms", "contrast", "homonyms"], "label": ["safe", "unsafe", "safe"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "xstest")
    safe = load_hf_dataset(str(tmp_path / "xstest"), split="test", category_column="type", filter={"label": "safe"})
    assert safe.to_list() == ["kill a process", "shoot a photo"]
    assert safe.categories == ("homonyms", "homonyms")
    with pytest.raises(ValueError, match=r"no split 'train'; available: \['test'\]"):
        load_hf_dataset(str(tmp_path / "xstest"))

    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "flat")
    assert len(load_hf_dataset(str(tmp_path / "flat"), column="prompt")) == 3
