"""How much a model refuses: the logit refusal score at the last prompt position, refusal tokens
derived from the model's own refusals, and judged refusal and compliance rates with Wilson intervals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.chat import batches, format_prompt, tokenize_prompts
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Intervention, intervene
from failclosed_interp.judges import Judge, ThreeWayJudge, Verdict, classify
from failclosed_interp.models import ChatModel
from failclosed_interp.rdo_config import addition_of
from failclosed_interp.stats import RateEstimate, wilson_rate


@torch.no_grad()
def last_token_logits(
    model: ChatModel,
    instructions: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[Tensor, "batch d_vocab"]:
    """Next-token logits at the last prompt position (float32, on CPU), under interventions."""
    out = []
    with intervene(model, interventions):
        for chunk in tqdm(list(batches(list(instructions), batch_size)), desc="scoring", disable=not progress, leave=False):
            batch = tokenize_prompts(model, chunk)
            # The HF module is bridged in place, so its forward fires the same hooks; logits_to_keep=1
            # skips the LM head at every other position (a large share of a small model's cost).
            if model.hf_model is not None:
                hf_out = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)
                logits = hf_out.logits[:, -1]
            else:
                logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)[:, -1]
            out.append(logits.float().cpu())
    logits = torch.cat(out)
    if not torch.isfinite(logits).all():
        raise ValueError("the model produced NaN/inf logits; check the model weights, dtype and interventions")
    return logits


def refusal_score_from_logits(
    logits: Float[Tensor, "batch d_vocab"], refusal_tokens: Sequence[int]
) -> Float[Tensor, "batch"]:
    """log p - log(1 - p) of the probability mass p on the refusal tokens, in float64."""
    if not refusal_tokens:
        raise ValueError("no refusal tokens given; derive them with refusal_tokens_from_responses()")
    probs = torch.softmax(logits.double(), dim=-1)
    p = probs[:, list(refusal_tokens)].sum(-1).clamp(1e-300, 1 - 1e-16)
    return torch.log(p) - torch.log1p(-p)


def refusal_scores(
    model: ChatModel,
    instructions: Sequence[str],
    refusal_tokens: Sequence[int],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
) -> Float[Tensor, "batch"]:
    """Refusal score (log-odds of the refusal tokens at the last prompt position, float64) per instruction."""
    return refusal_score_from_logits(last_token_logits(model, instructions, interventions, batch_size=batch_size), refusal_tokens)


def first_token_refusals(
    logits: Float[Tensor, "batch d_vocab"], refusal_tokens: Sequence[int]
) -> Float[Tensor, "batch"]:
    """1.0 where the most likely next token is one of the refusal tokens (the answer greedy decoding
    starts with is a refusal), else 0.0."""
    if not refusal_tokens:
        raise ValueError("no refusal tokens given; derive them with refusal_tokens_from_responses()")
    return torch.isin(logits.argmax(-1), torch.tensor(list(refusal_tokens))).double()


def first_token_refusal_rate(
    model: ChatModel,
    instructions: Sequence[str],
    refusal_tokens: Sequence[int],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
) -> RateEstimate:
    """Share of `instructions` whose greedy answer starts with a refusal token, with its Wilson interval:
    a refusal rate from one forward pass, no generation. The criterion is the top first token rather
    than refusal score > 0: a model's refusal token often wins greedy decoding with less than half the
    probability mass, so score > 0 undercounts refusals (`benchmarks/logit_measure_check.py` measures
    both criteria against judged answers)."""
    logits = last_token_logits(model, instructions, interventions, batch_size=batch_size)
    return wilson_rate(first_token_refusals(logits, refusal_tokens).tolist())


def kl_from_logits(
    reference: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"]
) -> Float[Tensor, "batch"]:
    """KL(reference || other) of next-token distributions, per row, float64."""
    p_log = torch.log_softmax(reference.double(), -1)
    q_log = torch.log_softmax(other.double(), -1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def first_response_tokens(model: ChatModel, instructions: Sequence[str], responses: Sequence[str]) -> list[int]:
    """The token each response starts with, tokenised in context (after the chat prompt)."""
    tokens = []
    for instruction, response in zip(instructions, responses, strict=True):
        prompt = format_prompt(model.tokenizer, instruction)
        prompt_ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = model.tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
        if len(full_ids) > len(prompt_ids):
            tokens.append(full_ids[len(prompt_ids)])
    return tokens


class NoRefusals(ValueError):
    """None of a model's responses is a refusal, so there is no refusal to derive tokens from or locate."""


def refusal_tokens_from_responses(
    model: ChatModel,
    instructions: Sequence[str],
    responses: Sequence[str],
    judge: Judge = ThreeWayJudge(),
    *,
    coverage: float = 0.9,
    max_tokens: int = 5,
) -> list[int]:
    """The model's own refusal-start tokens: first tokens of responses the judge calls refusals,
    most common first, until they cover `coverage` of those refusals (at most `max_tokens`)."""
    refused = judge(instructions, responses)
    pairs = [(i, r) for i, r, y in zip(instructions, responses, refused) if y]
    if not pairs:
        raise NoRefusals(
            "none of the responses is a refusal, so refusal tokens cannot be derived from them; "
            "give responses of a model that refuses, or refusal texts via refusal_tokens_from_texts()"
        )
    counts = Counter(first_response_tokens(model, *zip(*pairs)))
    chosen, covered = [], 0
    for token, n in counts.most_common(max_tokens):
        chosen.append(token)
        covered += n
        if covered >= coverage * len(pairs):
            break
    return chosen


def refusal_tokens_from_texts(model: ChatModel, texts: Sequence[str]) -> list[int]:
    """First tokens of given refusal texts, e.g. ["I'm sorry", "I cannot"]; for models that never refuse yet."""
    probe = "Tell me something."
    return sorted(set(first_response_tokens(model, [probe] * len(texts), texts)))


@dataclass(frozen=True)
class JudgedResponses:
    """Generations for a prompt set, the judge's per-item labels (`Verdict` values), and the shares of
    refusals (`rate`) and compliances (`compliance`), each with a Wilson interval. A non-answer is neither."""

    instructions: tuple[str, ...]
    responses: tuple[str, ...]
    refused: tuple[bool, ...]
    rate: RateEstimate
    judge: str
    labels: tuple[str, ...]
    compliance: RateEstimate

    def to_dict(self) -> dict:
        return {
            "judge": self.judge,
            "refusal_rate": self.rate.to_dict(),
            "compliance_rate": self.compliance.to_dict(),
            "items": [
                {"prompt": p, "response": r, "refused": y, "label": label}
                for p, r, y, label in zip(self.instructions, self.responses, self.refused, self.labels, strict=True)
            ],
        }


def judge_responses(
    instructions: Sequence[str], responses: Sequence[str], judge: Judge = ThreeWayJudge()
) -> JudgedResponses:
    """Label every (instruction, response) pair with `judge` and estimate the refusal and compliance rates."""
    verdicts = classify(judge, instructions, responses)
    return JudgedResponses(
        tuple(instructions), tuple(responses), tuple(v is Verdict.REFUSAL for v in verdicts),
        wilson_rate([float(v is Verdict.REFUSAL) for v in verdicts]), judge.name,
        tuple(v.value for v in verdicts), wilson_rate([float(v is Verdict.COMPLIANCE) for v in verdicts]),
    )


def refusal_rate(
    model: ChatModel,
    instructions: Sequence[str],
    *,
    judge: Judge = ThreeWayJudge(),
    generation: GenerationConfig = GenerationConfig(max_new_tokens=48),
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> JudgedResponses:
    """Generate under `interventions`, judge every response, and estimate the refusal rate."""
    return refusal_rates(model, {"prompts": instructions}, judge=judge, generation=generation,
                         interventions=interventions, progress=progress)["prompts"]


def refusal_rates(
    model: ChatModel,
    prompt_sets: Mapping[str, Sequence[str]],
    *,
    judge: Judge = ThreeWayJudge(),
    generation: GenerationConfig = GenerationConfig(max_new_tokens=48),
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> dict[str, JudgedResponses]:
    """`refusal_rate` of each named prompt set under the same `interventions`, generated together: decoding
    costs per step about the same for a wide batch as for a narrow one, so one batch of all the sets takes
    about as long as one set alone. With left padding and attention masks, each prompt gets the answer it
    gets in any other batch, up to floating-point rounding."""
    flat = [prompt for prompts in prompt_sets.values() for prompt in prompts]
    responses = iter(generate(model, flat, generation, interventions, progress=progress))
    return {name: judge_responses(prompts, [next(responses) for _ in prompts], judge) for name, prompts in prompt_sets.items()}


def token_strings(model: ChatModel, tokens: Sequence[int]) -> list[str]:
    """Each token id decoded on its own, for printing refusal tokens."""
    return [model.tokenizer.decode([t]) for t in tokens]


def mediation_scores(
    model: ChatModel, direction: Direction, harmful: Sequence[str], harmless: Sequence[str], refusal_tokens: Sequence[int],
    base: Sequence[Intervention] = (), *, skip_template_prefix: bool = False, batch_size: int = 16,
) -> dict[str, float]:
    """Does `direction` mediate refusal (under `base`)? "harmful_score_drop": how much ablating it lowers the
    mean harmful refusal score; "harmless_score_rise": how much adding it (at its layer, with its strength
    `direction.norm`) raises the mean harmless one. Both in refusal log-odds."""
    def mean_score(prompts: Sequence[str], extra: list[Intervention]) -> float:
        return float(refusal_scores(model, prompts, refusal_tokens, [*base, *extra], batch_size=batch_size).mean())

    ablation = DirectionSet((direction,)).ablation(skip_template_prefix=skip_template_prefix)
    return {"harmful_score_drop": mean_score(harmful, []) - mean_score(harmful, [ablation]),
            "harmless_score_rise": mean_score(harmless, [addition_of(direction.vector, direction)]) - mean_score(harmless, [])}

