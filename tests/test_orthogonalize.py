"""Weight orthogonalisation computes exactly what hook ablation computes, with tied or untied
embeddings, in memory and through an exported checkpoint reloaded by `load_model`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaForCausalLM

from failclosed_interp.adapters import LoraSettings, save_adapter
from failclosed_interp.interventions import Ablation, intervene
from failclosed_interp.models import boot_bridge, load_model
from failclosed_interp.replicas import tiny_llama_hf, tiny_tokenizer
from failclosed_interp.orthogonalize import RECORD_FILE, export_orthogonalized, orthogonalize_

ATOL = 1e-4


@pytest.fixture(scope="module")
def basis() -> torch.Tensor:
    return torch.randn(3, 64, generator=torch.Generator().manual_seed(7))


def _tied_llama(seed: int = 0) -> LlamaForCausalLM:
    config = copy.deepcopy(tiny_llama_hf().config)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _hook_ablated_logits(model, basis, batch, logits_of):
    with intervene(model, [Ablation(basis, skip_template_prefix=False)]):  # weights act at every position
        return logits_of(model, batch)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def test_untied_orthogonalised_weights_match_hook_ablation(tiny_llama, basis, batch_of, logits_of):
    batch = batch_of(tiny_llama)
    expected = _hook_ablated_logits(tiny_llama, basis, batch, logits_of)
    hf = orthogonalize_(tiny_llama_hf(0), basis)
    q = torch.linalg.qr(basis.double().T)[0].T.float()
    assert (hf.model.embed_tokens.weight @ q.T).abs().max() < 1e-5
    assert (q @ hf.model.layers[0].self_attn.o_proj.weight).abs().max() < 1e-5
    assert (q @ hf.model.layers[-1].mlp.down_proj.weight).abs().max() < 1e-5
    got = logits_of(boot_bridge(hf, tiny_tokenizer(), "ortho"), batch)
    assert _max_diff(got, expected) <= ATOL
    assert _max_diff(logits_of(tiny_llama, batch), expected) > 1e-2  # the ablation matters


def test_tied_embeddings_are_untied_and_match_hook_ablation(basis, batch_of, logits_of):
    reference = boot_bridge(_tied_llama(), tiny_tokenizer(), "tied")
    batch = batch_of(reference)
    expected = _hook_ablated_logits(reference, basis, batch, logits_of)
    hf = _tied_llama()
    unembedding = hf.lm_head.weight.detach().clone()
    orthogonalize_(hf, basis)
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight
    assert hf.config.tie_word_embeddings is False
    assert torch.equal(hf.lm_head.weight, unembedding)  # the unembedding is untouched
    got = logits_of(boot_bridge(hf, tiny_tokenizer(), "tied-ortho"), batch)
    assert _max_diff(got, expected) <= ATOL


def test_export_reloads_through_load_model(tiny_llama, basis, batch_of, logits_of, tmp_path):
    batch = batch_of(tiny_llama)
    expected = _hook_ablated_logits(tiny_llama, basis, batch, logits_of)
    out = export_orthogonalized("tiny-llama", basis, tmp_path / "ortho")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho"]  # no temp folder left behind
    assert json.loads((out / RECORD_FILE).read_text())["n_dirs"] == 3
    reloaded = load_model(str(out))
    assert _max_diff(logits_of(reloaded, batch), expected) <= ATOL
    with pytest.raises(FileExistsError, match="overwrite"):
        export_orthogonalized("tiny-llama", basis, out)
    export_orthogonalized("tiny-llama", basis[:1], out, overwrite=True)
    assert json.loads((out / RECORD_FILE).read_text())["n_dirs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho"]


def test_export_of_a_tied_checkpoint_reloads(basis, batch_of, logits_of, tmp_path):
    base = tmp_path / "tied-base"
    _tied_llama().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    reference = load_model(str(base))
    batch = batch_of(reference)
    expected = _hook_ablated_logits(reference, basis, batch, logits_of)
    reloaded = load_model(str(export_orthogonalized(str(base), basis, tmp_path / "ortho")))
    assert _max_diff(logits_of(reloaded, batch), expected) <= ATOL


def test_export_merges_a_lora_adapter(basis, batch_of, logits_of, tmp_path):
    settings = LoraSettings(r=4)
    trained = load_model("tiny-llama", lora=settings)
    with torch.no_grad():
        for name, param in trained.bridge.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    save_adapter(trained, tmp_path / "adapter", settings)
    reference = load_model("tiny-llama", adapter=tmp_path / "adapter")
    batch = batch_of(reference)
    expected = _hook_ablated_logits(reference, basis, batch, logits_of)
    assert _max_diff(expected, _hook_ablated_logits(load_model("tiny-llama"), basis, batch, logits_of)) > 1e-3
    out = export_orthogonalized("tiny-llama", basis, tmp_path / "ortho", adapter=tmp_path / "adapter")
    assert _max_diff(logits_of(load_model(str(out)), batch), expected) <= ATOL


def test_refuses_wrong_width_and_unknown_architectures(basis, tmp_path):
    with pytest.raises(ValueError, match="d_model"):
        orthogonalize_(tiny_llama_hf(0), torch.randn(2, 32))
    bridged = load_model("tiny-llama").hf_model
    with pytest.raises(ValueError, match="unwrapped"):
        orthogonalize_(bridged, basis)

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=32))
    with pytest.raises(ValueError, match="model.layers|o_proj"):
        orthogonalize_(gpt2, basis)

    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma2 = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16,
    ))
    with pytest.raises(ValueError, match="hook ablation"):
        orthogonalize_(gemma2, basis)
    with pytest.raises(ValueError, match="cannot merge"):
        bad = tmp_path / "not-an-adapter"
        bad.mkdir()
        export_orthogonalized("tiny-llama", basis, tmp_path / "out", adapter=bad)
    assert not (tmp_path / "out").exists()
