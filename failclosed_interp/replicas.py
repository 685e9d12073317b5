"""Tiny offline test models: random weights, built in well under a second, never a default.

`tiny-llama` (character tokenizer, toy template) and `tiny-native` (a native TransformerLens model)
are the generic ones. The family replicas `tiny-llama2`, `tiny-llama3`, `tiny-gemma2` and `tiny-qwen2`
use the real HF architecture class of each family the toolkit targets, at a tiny size, with that
family's chat template, special tokens and tokenizer kind (byte-level BPE trained here on the prompt
sets the package ships). They exist to catch what breaks silently between families: Gemma-2's
sublayer post-norms, embedding scale, logit soft-capping and tied unembedding; Qwen2's attention
biases; each template's special tokens and post-instruction positions."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch
from torch import nn

TINY_LLAMA = "tiny-llama"
TINY_NATIVE = "tiny-native"

# --- the generic tiny Llama: one token per character, a toy chat template -------------------------

_TINY_SPECIALS = ["<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
_TINY_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def tiny_tokenizer():
    """A character-level tokenizer with a chat template, built offline (101 tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(_TINY_SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<|end|>", additional_special_tokens=_TINY_SPECIALS[1:]
    )
    tokenizer.chat_template = _TINY_TEMPLATE
    return tokenizer


def tiny_llama_hf(seed: int = 0, n_layers: int = 4, d_model: int = 64) -> nn.Module:
    """A random Llama (RMSNorm, GQA, gated MLP) sized for the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer()), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=0, eos_token_id=3, bos_token_id=None,
        tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_native_bridge(seed: int = 0):
    """(bridge, tokenizer) of a native TransformerLens model (no HF module) in eval mode."""
    from transformer_lens import TransformerBridge

    tokenizer = tiny_tokenizer()
    cfg = dict(d_model=32, d_head=8, n_layers=2, n_ctx=128, d_vocab=len(tokenizer), seed=seed)
    bridge = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
    bridge.eval()
    tokenizer.padding_side = "left"
    return bridge, tokenizer


# --- family replicas --------------------------------------------------------------------------------

# Chat templates as the families' HF tokenizers ship them (Qwen2.5: the branch without tool calls).
_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
_QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Family:
    """What a replica copies from its family: tokens, template, tokenizer behaviour, architecture."""

    name: str
    template: str
    specials: tuple[str, ...]  # added in this order, ids 0.. (bos/eos/pad among them)
    bos: str | None
    eos: str  # the tokenizer's eos_token
    pad: str | None  # None: the family ships no pad token
    stop: tuple[str, ...]  # what generation_config.eos_token_id lists (end of turn included)
    prepend_bos: bool  # the tokenizer adds bos when add_special_tokens=True
    vocab_size: int
    build: Callable[[int], nn.Module]  # vocab size -> random model, seeded by the caller


def _common(vocab: int) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=512, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def _llama(vocab: int, **extra) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_common(vocab), tie_word_embeddings=False, **extra))


def _llama2(vocab: int) -> nn.Module:
    return _llama(vocab, num_key_value_heads=4, rope_theta=10_000.0, rms_norm_eps=1e-5)  # no GQA


def _llama3(vocab: int) -> nn.Module:
    return _llama(vocab, num_key_value_heads=2, rope_theta=500_000.0, rms_norm_eps=1e-5)


def _gemma2(vocab: int) -> nn.Module:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        **_common(vocab), num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=16,  # shorter than most prompts, so local and global layers differ
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh",
    )
    config._attn_implementation = "eager"  # soft-capped attention scores: what HF recommends for Gemma-2
    return Gemma2ForCausalLM(config)


def _qwen2(vocab: int) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Tied like Qwen2.5-0.5B/1.5B/3B; q/k/v biases are part of the architecture.
    return Qwen2ForCausalLM(Qwen2Config(
        **_common(vocab), num_key_value_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False,
    ))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tiny-llama2", _LLAMA2_TEMPLATE, ("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", pad=None,
           stop=("</s>",), prepend_bos=True, vocab_size=420, build=_llama2),
    Family("tiny-llama3", _LLAMA3_TEMPLATE,
           ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, stop=("<|end_of_text|>", "<|eot_id|>"),
           prepend_bos=True, vocab_size=520, build=_llama3),
    Family("tiny-gemma2", _GEMMA2_TEMPLATE, ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", pad="<pad>", stop=("<eos>", "<end_of_turn>"), prepend_bos=True,
           vocab_size=480, build=_gemma2),
    Family("tiny-qwen2", _QWEN2_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           bos=None, eos="<|im_end|>", pad="<|endoftext|>", stop=("<|im_end|>", "<|endoftext|>"),
           prepend_bos=False, vocab_size=450, build=_qwen2),
)}
REPLICAS = tuple(FAMILIES)


@lru_cache(maxsize=1)
def _training_text() -> tuple[str, ...]:
    """The instructions of the shipped prompt sets: the corpus the replicas' BPE merges come from."""
    root = resources.files("failclosed_interp.prompts") / "data"
    texts = []
    for name in ("harmful.json", "harmless.json", "borderline.json"):
        rows = json.loads((root / name).read_text())
        texts += [row["instruction"] if isinstance(row, dict) else str(row) for row in rows]
    return tuple(texts)


@lru_cache(maxsize=len(FAMILIES))
def _tokenizer_json(name: str) -> str:
    """Serialized byte-level BPE of one family (trained once per process; deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    family = FAMILIES[name]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=family.vocab_size, special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(_training_text(), trainer=trainer)
    if family.prepend_bos:
        bos_id = core.token_to_id(family.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)]
        )
    return core.to_str()


def replica_tokenizer(name: str):
    """The family's tokenizer: byte-level BPE, its special tokens and its real chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    family = _family(name)
    tokens = dict(eos_token=family.eos, bos_token=family.bos, pad_token=family.pad)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(name)),
        additional_special_tokens=[s for s in family.specials if s not in tokens.values()],
        name_or_path=name, add_bos_token=family.prepend_bos,  # the bridge reads both from init kwargs
        **{k: v for k, v in tokens.items() if v is not None},
    )
    tokenizer.chat_template = family.template
    return tokenizer


def replica_hf(name: str, seed: int = 0) -> tuple[nn.Module, object]:
    """(random HF model of the family's real architecture class, its tokenizer), in eval mode.

    Norm weights and biases are randomised too: left at their usual init (ones, zeros), a post-norm
    would be a plain rescaling and Qwen2's attention biases would be absent, hiding what differs."""
    family = _family(name)
    tokenizer = replica_tokenizer(name)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    model = family.build(len(tokenizer))
    with torch.no_grad():
        for module_name, param in model.named_parameters():
            if "norm" in module_name:
                param.add_(0.2 * torch.randn_like(param))
            elif module_name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
    for config in (model.config, model.generation_config):
        config.bos_token_id = None if family.bos is None else ids(family.bos)
        config.pad_token_id = None if family.pad is None else ids(family.pad)
    model.config.eos_token_id = ids(family.eos)
    model.generation_config.eos_token_id = [ids(t) for t in family.stop]
    return model.eval(), tokenizer


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown replica {name!r}; choose one of {REPLICAS}")
    return FAMILIES[name]
