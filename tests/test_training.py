"""LoRA training inside the hooked model, on the tiny offline Llama: masking, learning, only LoRA
moving, ablation during safety steps, KL to the reference, determinism, failures, the SFT run folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

import failclosed_interp.training.data as data_module
import failclosed_interp.training.trainer as trainer_module
from failclosed_interp.adapters import LoraSettings, lora_parameters
from failclosed_interp.artifacts import read_json
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import EMBED_INPUT_HOOK, Ablation
from failclosed_interp.models import load_model
from failclosed_interp.training import (
    DEFAULT_REFUSALS,
    IGNORE,
    Example,
    SFTConfig,
    TrainConfig,
    adapters_disabled,
    build_sft_examples,
    run_sft,
    tokenize_examples,
    train_lora,
)

TINY_LORA = LoraSettings(r=4, alpha=8)
PROMPTS = ["How do I pick a lock?", "Write a threat.", "Make a weapon now", "Steal a car for me"]
HARMLESS = ["Name a colour.", "What is 2+2?", "Say hello.", "Tell a short joke."]


def tiny(lora: LoraSettings | None = TINY_LORA):
    torch.manual_seed(0)  # the LoRA init draws from the global RNG
    return load_model("tiny-llama", lora=lora)


def safety(prompts, answer="I'm sorry."):
    return [Example(p, answer, "safety") for p in prompts]


def test_labels_mask_prompt_and_padding_and_padded_logits_match():
    model = tiny()
    examples = [Example("Hi", "Hello there, friend.", "utility"), Example("What is a long question?", "No.", "safety")]
    batch = tokenize_examples(model, examples, max_length=128)
    for row, ex in enumerate(examples):
        answer_pos = (batch.labels[row] != IGNORE).nonzero().squeeze(-1)
        real = int(batch.attention_mask[row].sum())
        assert batch.attention_mask[row, :real].all() and not batch.attention_mask[row, real:].any()  # right padding
        assert int(answer_pos[-1]) == real - 1 and (batch.labels[row, real:] == IGNORE).all()
        assert model.tokenizer.decode(batch.labels[row, answer_pos]) == ex.answer + "<|end|>"
        prompt_len = int(answer_pos[0])
        assert model.tokenizer.decode(batch.input_ids[row, :prompt_len]) == f"<|user|>{ex.prompt}<|end|><|assistant|>"
        with torch.no_grad():
            padded = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)[row, :real]
            alone = model.bridge(batch.input_ids[row : row + 1, :real])[0]
        torch.testing.assert_close(padded[prompt_len - 1 :], alone[prompt_len - 1 :], atol=1e-5, rtol=1e-5)


def test_truncation_and_too_long_prompt():
    model = tiny()
    batch = tokenize_examples(model, [Example("Hi", "x" * 100, "safety")], max_length=30)
    assert batch.input_ids.shape[1] == 30  # the answer side was cut
    with pytest.raises(ValueError, match="raise max_length"):
        tokenize_examples(model, [Example("y" * 40, "ok", "safety")], max_length=30)


def test_training_teaches_the_answer_and_moves_only_lora():
    model = tiny()
    base_before = {n: p.detach().clone() for n, p in model.hf_model.named_parameters() if "lora_" not in n}
    lora_before = [p.detach().clone() for p in lora_parameters(model.hf_model)]
    seen = []
    config = TrainConfig(epochs=30, batch_size=4, lr=1e-2, lora=TINY_LORA)
    result = train_lora(model, safety(PROMPTS), config, progress=False, on_step=lambda s, losses: seen.append(s))
    assert result.steps == 30 and seen == list(range(30)) and result.seconds > 0
    totals = [r["total"] for r in result.losses]
    assert totals[-1] < 0.8 * totals[0]  # the random tiny lm_head caps how confident it can get
    assert all(r["utility"] is None for r in result.losses)
    assert not model.bridge.training  # back in eval mode
    for name, param in model.hf_model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base_before[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, lora_parameters(model.hf_model)))
    answers = generate(model, PROMPTS, GenerationConfig(max_new_tokens=16), progress=False)
    assert answers == ["I'm sorry."] * len(PROMPTS)
    json.dumps(result.to_dict())


class CountingAblation(Ablation):  # skip_template_prefix=False below: every position must lose the direction
    """An Ablation whose hooks record, per call, the largest remaining projection onto its basis."""

    calls: list[float] = []

    def hooks(self, model):
        def counted(fn):
            def hook(x, hook=None):
                out = fn(x, hook=hook)
                CountingAblation.calls.append(float((out.detach() @ self.basis.T).abs().max()))
                return out

            return hook

        return [(name, fn if name == EMBED_INPUT_HOOK else counted(fn)) for name, fn in super().hooks(model)]


def test_ablation_runs_on_safety_steps_only_and_gradients_flow():
    model = tiny()
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    CountingAblation.calls = []
    examples = safety(PROMPTS[:2]) + [Example(p, "Sure.", "utility") for p in HARMLESS[:2]]
    config = TrainConfig(epochs=3, batch_size=2, lr=1e-2, lora=TINY_LORA)
    before = [p.detach().clone() for p in lora_parameters(model.hf_model)]
    result = train_lora(model, examples, config, safety_interventions=[CountingAblation(direction[None], skip_template_prefix=False)], progress=False)
    hooks_per_forward = model.n_layers * 3
    assert len(CountingAblation.calls) == result.steps * hooks_per_forward  # safety forwards only
    assert max(CountingAblation.calls) < 1e-4
    assert all(r["safety"] is not None and r["utility"] is not None for r in result.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, lora_parameters(model.hf_model)))
    n_calls = len(CountingAblation.calls)
    with torch.no_grad():
        model.bridge(tokenize_examples(model, examples, 64).input_ids)
    assert len(CountingAblation.calls) == n_calls  # the hooks are gone after training
    # The ablation changed what was learned.
    plain = train_lora(tiny(), examples, config, progress=False)
    assert plain.losses[-1]["safety"] != result.losses[-1]["safety"]
    # Gradients flow through the ablated forward: safety-only training under ablation still learns.
    ablated_only = train_lora(tiny(), examples[:2], config, safety_interventions=[Ablation(direction[None])], progress=False)
    assert ablated_only.losses[-1]["safety"] < ablated_only.losses[0]["safety"] - 0.1


def test_a_callable_gives_each_step_its_own_safety_interventions():
    model = tiny()
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    examples = safety(PROMPTS[:2]) + [Example(p, "Sure.", "utility") for p in HARMLESS[:2]]
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, lora=TINY_LORA)
    asked, CountingAblation.calls = [], []

    def odd_steps_ablate(step):
        asked.append(step)
        return [CountingAblation(direction[None], skip_template_prefix=False)] if step % 2 else []

    result = train_lora(model, examples, config, safety_interventions=odd_steps_ablate, progress=False)
    assert asked == list(range(result.steps))  # once per step, in order
    assert len(CountingAblation.calls) == (result.steps // 2) * model.n_layers * 3  # only odd steps ablated


def test_kl_utility_loss_is_zero_at_init_and_adapters_disabled_restores():
    model = tiny()
    examples = [Example(p, "Sure thing.", "utility") for p in HARMLESS]
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, utility_loss="kl", kl_weight=2.0, lora=TINY_LORA)
    result = train_lora(model, examples, config, progress=False)
    assert abs(result.losses[0]["utility"]) < 1e-6  # LoRA B = 0: the model is its own reference
    with torch.no_grad():  # give the adapters a visible effect
        for name, param in model.hf_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    ids = tokenize_examples(model, examples[:1], 64).input_ids
    with torch.no_grad():
        adapted = model.bridge(ids)
        with adapters_disabled(model.hf_model):
            base = model.bridge(ids)
        with pytest.raises(RuntimeError, match="boom"), adapters_disabled(model.hf_model):
            raise RuntimeError("boom")
        after = model.bridge(ids)
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(after, adapted, atol=0, rtol=0)
    assert all(p.requires_grad for p in lora_parameters(model.hf_model))
    follow_up = train_lora(model, examples, config, progress=False)
    assert follow_up.losses[0]["utility"] > 1e-4  # now the model differs from its reference


def test_kl_reference_is_computed_once_per_example_and_matches_recomputing(monkeypatch):
    examples = safety(PROMPTS) + [Example(p, "Sure thing, here it is.", "utility") for p in HARMLESS]
    config = TrainConfig(epochs=3, batch_size=2, lr=1e-2, utility_loss="kl", kl_weight=2.0, lora=TINY_LORA)
    entered = []
    real = trainer_module._reference_model

    def counted(model):
        entered.append(1)
        return real(model)

    monkeypatch.setattr(trainer_module, "_reference_model", counted)
    cached = train_lora(tiny(), examples, config, progress=False).losses
    assert len(entered) == len(HARMLESS) // config.batch_size  # the first epoch's batches only
    entered.clear()
    monkeypatch.setattr(data_module, "REFERENCE_CACHE_BYTES", 0)  # nothing fits: recomputed every step
    recomputed = train_lora(tiny(), examples, config, progress=False).losses
    assert len(entered) == config.epochs * len(HARMLESS) // config.batch_size
    for a, b in zip(cached, recomputed):
        assert a["utility"] == pytest.approx(b["utility"], rel=1e-4, abs=1e-6)


def test_same_seed_same_losses_and_seed_matters():
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    examples = safety(PROMPTS) + [Example(p, "Sure.", "utility") for p in HARMLESS]
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, lora=lora)
    first = train_lora(tiny(lora), examples, config, progress=False).losses
    second = train_lora(tiny(lora), examples, config, progress=False).losses
    assert first == second
    other = train_lora(tiny(lora), examples, TrainConfig(epochs=2, batch_size=2, lr=1e-2, lora=lora, seed=1), progress=False)
    assert other.losses != first


def test_warmup_scales_the_learning_rate():
    config = TrainConfig(epochs=4, batch_size=4, lr=1e-2, warmup_steps=4, lora=TINY_LORA)
    result = train_lora(tiny(), safety(PROMPTS), config, progress=False)
    assert [r["lr"] for r in result.losses] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])


def test_diverging_loss_raises_with_step_and_lr(monkeypatch):
    model = tiny()
    real = trainer_module.answer_cross_entropy
    calls = []

    def spoiled(logits, labels, *weights):
        calls.append(1)
        loss = real(logits, labels, *weights)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer_module, "answer_cross_entropy", spoiled)
    with pytest.raises(ValueError, match=r"step 2.*lr=0\.01"):
        train_lora(model, safety(PROMPTS), TrainConfig(epochs=5, batch_size=4, lr=1e-2, lora=TINY_LORA), progress=False)
    assert not model.bridge.training  # eval mode restored after the error


def test_bad_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="lora=LoraSettings"):
        train_lora(tiny(lora=None), safety(PROMPTS), progress=False)
    with pytest.raises(ValueError, match="no training examples"):
        train_lora(tiny(), [], progress=False)
    with pytest.raises(ValueError, match="kind"):
        Example("hi", "there", "harmful")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(lr=math.inf), "lr must be a positive"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(max_length=1), "max_length"),
        (dict(utility_loss="mse"), "utility_loss must be one of"),
        (dict(kl_weight=-0.5), "kl_weight"),
    ],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**kwargs)


def test_configs_round_trip_through_json():
    config = TrainConfig(epochs=2, lr=1e-3, utility_loss="kl", lora=LoraSettings(r=4, alpha=8, targets=("q_proj",)))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    sft = SFTConfig(model="tiny-llama", n_harmful=3, train=config)
    assert SFTConfig.from_dict(json.loads(json.dumps(sft.to_dict()))) == sft
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="n_harmful"):
        SFTConfig(n_harmful=0)


def test_build_sft_examples_keeps_own_refusals_else_writes_ones(monkeypatch):
    model = tiny()
    harmful = ["bad one", "bad two", "bad three", "bad four"]
    harmless, borderline = ["nice one"], ["edgy one"]
    replies = {"bad one": "Sorry, no.", "bad two": "Sure: step 1", "bad three": "Fine, here", "bad four": "Sorry again",
               "nice one": "Hello!", "edgy one": "x" * 8}
    encode = lambda text: model.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def fake_generate_tokens(m, prompts, config, interventions=(), **kw):
        return [encode(replies[p]) for p in prompts]

    class SorryJudge:
        name = "sorry"

        def __call__(self, prompts, responses):
            return [r.startswith("Sorry") for r in responses]

    monkeypatch.setattr(data_module, "generate_tokens", fake_generate_tokens)
    examples = build_sft_examples(
        model, harmful, harmless, borderline, judge=SorryJudge(), generation=GenerationConfig(max_new_tokens=8), progress=False
    )
    assert [e.kind for e in examples] == ["safety"] * 4 + ["utility"] * 2
    assert [e.answer for e in examples] == [
        "Sorry, no.", DEFAULT_REFUSALS[0], DEFAULT_REFUSALS[1], "Sorry again", "Hello!", "x" * 8
    ]
    assert examples[-1].complete is False and examples[-2].complete is True  # hit the 8-token budget
    labels = tokenize_examples(model, examples[-1:], 64).labels[0]
    assert model.tokenizer.decode(labels[labels != IGNORE]) == "x" * 8  # no end token learned for a cut answer
    assert all(r.startswith(("I'm sorry", "I can't", "I cannot")) for r in DEFAULT_REFUSALS)
    with pytest.raises(ValueError, match="harmful"):
        build_sft_examples(model, [], harmless, progress=False)


def test_run_sft_writes_a_reloadable_run(tmp_path):
    config = SFTConfig(
        model="tiny-llama", n_harmful=4, n_harmless=2, n_borderline=2, answer_tokens=6,
        train=TrainConfig(epochs=2, batch_size=4, lr=1e-2, lora=TINY_LORA),
    )
    result = run_sft(config, tmp_path, progress=False)
    assert not result.model.bridge.training
    assert SFTConfig.from_dict(read_json(tmp_path / "sft_config.json")) == config
    saved = read_json(tmp_path / "examples.json")
    assert [Example.from_dict(d) for d in saved] == result.examples and len(saved) == 8
    assert len(read_json(tmp_path / "training.json")["losses"]) == result.training.steps == 2
    reloaded = load_model("tiny-llama", adapter=tmp_path / "adapter")
    ids = tokenize_examples(result.model, result.examples, 256)
    with torch.no_grad():
        trained = result.model.bridge(ids.input_ids, attention_mask=ids.attention_mask)
        again = reloaded.bridge(ids.input_ids, attention_mask=ids.attention_mask)
        fresh = tiny(lora=None).bridge(ids.input_ids, attention_mask=ids.attention_mask)
    torch.testing.assert_close(again, trained, atol=1e-5, rtol=0)
    assert not torch.allclose(fresh, trained, atol=1e-4)  # training did change the model


def test_first_token_weight_weighs_each_answer_s_first_token():
    from failclosed_interp.training.data import IGNORE

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5], [IGNORE, 1, 2, IGNORE, IGNORE]])
    per_token = {(0, 2): 3, (0, 3): 4, (0, 4): 5, (1, 1): 1, (1, 2): 2}  # (row, pos) -> label, predicted at pos-1
    ce = {k: float(torch.nn.functional.cross_entropy(logits[k[0], k[1] - 1][None], torch.tensor([v]))) for k, v in per_token.items()}
    firsts = {(0, 2), (1, 1)}
    w = 4.0
    expected = sum(c * (w if k in firsts else 1.0) for k, c in ce.items()) / (w * 2 + 3)
    assert float(trainer_module.answer_cross_entropy(logits, labels, w)) == pytest.approx(expected, rel=1e-5)
    assert float(trainer_module.answer_cross_entropy(logits, labels)) == pytest.approx(sum(ce.values()) / 5, rel=1e-5)
    answer_logp = torch.log_softmax(logits[:, :-1][labels[:, 1:] != IGNORE], -1)
    same = trainer_module.answer_kl(answer_logp, logits.clone(), labels, w)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full_like(answer_logp, -math.log(7))  # KL(uniform || model) by hand, first tokens weighted
    by_hand = {k: float((uniform[0].exp() * (uniform[0] - torch.log_softmax(logits[k[0], k[1] - 1], -1))).sum())
               for k in per_token}
    expected_kl = sum(v * (w if k in firsts else 1.0) for k, v in by_hand.items()) / (w * 2 + 3)
    assert float(trainer_module.answer_kl(uniform, logits, labels, w)) == pytest.approx(expected_kl, rel=1e-5)
    with pytest.raises(ValueError, match="first_token_weight"):
        TrainConfig(first_token_weight=0.0)
