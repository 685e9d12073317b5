"""Every invariant the toolkit rests on, checked on a tiny replica of each model family it targets
(Llama-2, Llama-3, Gemma-2, Qwen2): real HF architecture classes, real chat templates, random weights.
Families differ exactly where refusal-direction tools break silently (Gemma-2's post-norms, tied
unembeddings, Qwen2's biases, each template's special tokens)."""

from __future__ import annotations

import time

import pytest
import torch
from peft import PeftModel

from conftest import PROMPTS
from failclosed_interp.adapters import LoraSettings, save_adapter
from failclosed_interp.chat import format_prompt, post_instruction_positions, template_prefix_ids, tokenize_prompts
from failclosed_interp.generation import GenerationConfig, generate_tokens
from failclosed_interp.interventions import SITES, Ablation, hook_name, intervene
from failclosed_interp.models import boot_bridge, load_model
from failclosed_interp.orthogonalize import orthogonalize_
from failclosed_interp.replicas import FAMILIES, REPLICAS, replica_hf, replica_tokenizer
from test_models_adapters import _perturb_lora_

# What the template puts after the user's text, as each family's own template renders it.
POST_INSTRUCTION = {
    "tiny-llama2": " [/INST]",
    "tiny-llama3": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "tiny-gemma2": "<end_of_turn>\n<start_of_turn>model\n",
    "tiny-qwen2": "<|im_end|>\n<|im_start|>assistant\n",
}
ARCHITECTURES = {"tiny-llama2": "LlamaForCausalLM", "tiny-llama3": "LlamaForCausalLM",
                 "tiny-gemma2": "Gemma2ForCausalLM", "tiny-qwen2": "Qwen2ForCausalLM"}
# Hook ablation equals a weight edit only where nothing nonlinear sits between a weight and the residual add.
WEIGHT_EDIT_EXACT = {"tiny-llama2": True, "tiny-llama3": True, "tiny-gemma2": False, "tiny-qwen2": True}


@pytest.fixture(scope="module", params=REPLICAS)
def family(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def direction(family):
    d = torch.randn(family.d_model, generator=torch.Generator().manual_seed(11))
    return d / d.norm()


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.bridge(batch.input_ids, attention_mask=batch.attention_mask)


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


# --- the replicas themselves -------------------------------------------------------------------------

@pytest.mark.parametrize("name", REPLICAS)
def test_replica_is_the_real_class_seeded_and_fast(name):
    first, tokenizer = replica_hf(name, seed=0)
    start = time.perf_counter()
    again, _ = replica_hf(name, seed=0)
    assert time.perf_counter() - start < 1.0
    assert type(first).__name__ == ARCHITECTURES[name]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    other, _ = replica_hf(name, seed=1)
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)
    assert tokenizer.chat_template == FAMILIES[name].template
    assert first.config.vocab_size == len(tokenizer) == FAMILIES[name].vocab_size


def test_replicas_keep_what_differs_between_families():
    gemma, _ = replica_hf("tiny-gemma2")
    assert gemma.lm_head.weight is gemma.model.embed_tokens.weight  # tied
    assert gemma.config.final_logit_softcapping and hasattr(gemma.model.layers[0], "post_feedforward_layernorm")
    qwen, _ = replica_hf("tiny-qwen2")
    assert qwen.model.layers[0].self_attn.q_proj.bias.abs().min() > 0  # attention biases are really there
    llama3, tokenizer = replica_hf("tiny-llama3")
    assert llama3.lm_head.weight is not llama3.model.embed_tokens.weight
    assert tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token  # Llama-3 ships no pad token
    stops = set(llama3.generation_config.eos_token_id)
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in stops  # generation ends at the end of the turn


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-llama3", "tiny-gemma2"])
def test_tokenizers_add_bos_like_the_family_and_the_template_carries_it_once(name):
    tokenizer = replica_tokenizer(name)
    bos = tokenizer.bos_token_id
    assert tokenizer("hi")["input_ids"][0] == bos
    ids = tokenizer(format_prompt(tokenizer, "hi"), add_special_tokens=False)["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1


# --- bridge and hooks -----------------------------------------------------------------------------------

def test_bridge_boots_every_hook_resolves_and_logits_match_hf(family, batch_of):
    for layer in range(family.n_layers):
        for site in SITES:
            assert hook_name(layer, site) in family.bridge.hook_dict, hook_name(layer, site)
    batch = batch_of(family)
    with torch.no_grad():
        hf = family.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert _max_diff(_logits(family, batch), hf) <= 1e-5


def test_attn_out_and_mlp_out_are_what_enters_the_residual_stream(family, batch_of, capture):
    """For Gemma-2 this pins the hooks after the post-attention / post-feedforward norms."""
    names = [hook_name(layer, s) for layer in range(family.n_layers) for s in SITES]
    batch = batch_of(family)
    with capture(family, names) as acts:
        _logits(family, batch)
    for layer in range(family.n_layers):
        a = {s: acts[hook_name(layer, s)] for s in SITES}
        torch.testing.assert_close(a["resid_post"], a["resid_pre"] + a["attn_out"] + a["mlp_out"], atol=1e-5, rtol=1e-5)


def test_ablation_leaves_no_component_in_any_write_or_the_stream(family, direction, batch_of, capture):
    names = [hook_name(layer, s) for layer in range(family.n_layers) for s in SITES]
    batch = batch_of(family)
    with capture(family, names) as clean:
        _logits(family, batch)
    with intervene(family, [Ablation(direction, skip_template_prefix=False)]), capture(family, names) as acts:
        _logits(family, batch)
    for name in names:
        scale = float(clean[name].abs().max())
        assert float((clean[name] @ direction).abs().max()) > 1e-3 * scale, f"{name}: vacuous, the direction was never there"
        assert float((acts[name] @ direction).abs().max()) <= 1e-5 * max(scale, 1.0), name


def test_ablating_twice_equals_once(family, direction, batch_of):
    batch = batch_of(family)
    with intervene(family, [Ablation(direction)]):
        once = _logits(family, batch)
    with intervene(family, [Ablation(direction), Ablation(direction.clone())]):
        twice = _logits(family, batch)
    assert _max_diff(once, twice) <= 1e-5
    assert _max_diff(once, _logits(family, batch)) > 1e-4  # the ablation did something


# --- weight orthogonalisation ------------------------------------------------------------------------------

def test_weight_orthogonalisation_equals_hook_ablation_or_is_refused_with_the_reason(family, direction, batch_of):
    hf, tokenizer = replica_hf(family.name)
    if not WEIGHT_EDIT_EXACT[family.name]:
        with pytest.raises(ValueError, match="normalises sublayer outputs.*hook ablation"):
            orthogonalize_(hf, direction)
        return
    unembedding = hf.lm_head.weight.detach().clone()
    orthogonalize_(hf, direction)
    assert torch.equal(hf.lm_head.weight, unembedding)  # tied or not, the unembedding is left alone
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight  # tied ones were untied
    batch = batch_of(family)
    with intervene(family, [Ablation(direction, skip_template_prefix=False)]):
        expected = _logits(family, batch)
    assert _max_diff(_logits(boot_bridge(hf, tokenizer, "edited"), batch), expected) <= 1e-4
    assert _max_diff(expected, _logits(family, batch)) > 1e-3  # not vacuous


# --- generation, LoRA, chat positions -------------------------------------------------------------------------

@pytest.mark.parametrize("ablate", [False, True], ids=["clean", "ablated"])
def test_cached_generation_equals_uncached(family, direction, ablate):
    interventions = [Ablation(direction)] if ablate else []
    run = lambda cache: generate_tokens(family, PROMPTS, GenerationConfig(max_new_tokens=10, use_cache=cache),
                                        interventions, progress=False)
    cached = run(True)
    assert cached == run(False)
    assert sum(map(len, cached)) >= 10  # some tokens were compared


def test_lora_at_init_changes_nothing_and_saved_adapters_load_in_plain_peft(family, batch_of, tmp_path):
    settings = LoraSettings(r=2, alpha=4)
    lora = load_model(family.name, lora=settings)
    batch = batch_of(family)
    assert _max_diff(_logits(lora, batch), _logits(family, batch)) <= 1e-6
    _perturb_lora_(lora)
    trained = _logits(lora, batch)
    assert _max_diff(trained, _logits(family, batch)) > 1e-4
    folder = save_adapter(lora, tmp_path / "adapter", settings)
    plain = PeftModel.from_pretrained(replica_hf(family.name)[0], str(folder)).eval()
    with torch.no_grad():
        peft_logits = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    real = batch.attention_mask.bool()  # padding positions attend to nothing and their logits mean nothing
    assert _max_diff(peft_logits[real], trained[real]) <= 1e-5


def test_post_instruction_positions_match_the_template(family):
    batch = tokenize_prompts(family, PROMPTS)
    positions = post_instruction_positions(family)
    for row in batch.input_ids:
        assert family.tokenizer.decode(row[positions]) == POST_INSTRUCTION[family.name]
        assert family.tokenizer.decode(row[positions[0] - 1 : positions[0]]) != POST_INSTRUCTION[family.name][:1]
    prefix = family.tokenizer.decode(list(template_prefix_ids(family.tokenizer)))
    assert format_prompt(family.tokenizer, "x").startswith(prefix) and prefix


# --- unsupported models ----------------------------------------------------------------------------------------

def test_an_architecture_the_bridge_cannot_wrap_is_named():
    from transformers import BioGptConfig, BioGptForCausalLM

    tokenizer = replica_tokenizer("tiny-qwen2")
    model = BioGptForCausalLM(BioGptConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="BioGptForCausalLM.*TransformerBridge cannot wrap"):
        boot_bridge(model, tokenizer, "tiny-biogpt")


def test_a_model_without_a_chat_template_is_refused(tmp_path):
    hf, tokenizer = replica_hf("tiny-llama3")
    tokenizer.chat_template = None
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        load_model(str(tmp_path))
