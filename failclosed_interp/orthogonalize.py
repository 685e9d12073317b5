"""Bake a subspace ablation into the weights: project the directions out of everything that writes
to the residual stream (embedding rows, attention output and MLP down projections), so the plain
HF checkpoint behaves like the hooked model under `Ablation(basis)` at its default sites, with no hooks.

Exact for pre-norm blocks whose sublayer outputs are added straight to the residual stream
(Llama, Qwen2, Mistral, Gemma-1). Models that normalise sublayer outputs before the residual add
(Gemma-2/3, OLMo-2) are refused: a nonlinear norm sits between the weight and the residual."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn

from failclosed_interp.artifacts import atomic_folder
from failclosed_interp.interventions import orthonormal_basis
from failclosed_interp.models import load_hf

BASIS_FILE = "orthogonalized_basis.safetensors"
RECORD_FILE = "orthogonalization.json"
# Sublayer-output norms (Gemma-2/3, OLMo-2) make weight orthogonalisation inexact.
_POST_SUBLAYER_NORMS = ("post_feedforward_layernorm",)


def _decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"{type(hf_model).__name__} has no `model.layers`; weight orthogonalisation supports Llama/Qwen/"
            f"Mistral/Gemma-style causal LMs. Use hook ablation (`Ablation`) for this model instead."
        )
    return layers


def _residual_writer(layer: nn.Module, path: str, index: int) -> nn.Linear:
    module = layer
    for part in path.split("."):
        module = getattr(module, part, None)
    if module is None:
        raise ValueError(
            f"layer {index} has no `{path}` module; weight orthogonalisation expects Llama/Qwen/Gemma-style names "
            f"(self_attn.o_proj, mlp.down_proj). Use hook ablation (`Ablation`) for this model instead."
        )
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"layer {index} `{path}` is a {type(module).__name__}, not a plain nn.Linear: pass the unwrapped HF "
            f"model (from `models.load_hf`, not a bridged ChatModel) with any LoRA merged (merge_and_unload())"
        )
    return module


def _untie_unembedding(hf_model: nn.Module, embedding: nn.Embedding) -> None:
    """Give the LM head its own copy of tied weights, so editing the embedding leaves the unembedding alone."""
    head = hf_model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != embedding.weight.data_ptr():
        return
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    hf_model.config.tie_word_embeddings = False
    text_config = hf_model.config.get_text_config()
    if text_config is not hf_model.config:
        text_config.tie_word_embeddings = False


def _project_rows_(weight: Tensor, q: Tensor) -> None:
    """W <- W - (W Q^T) Q for W whose rows live in the residual stream (computed in float32)."""
    w = weight.float()
    weight.copy_(w - (w @ q.T) @ q)


def _project_columns_(weight: Tensor, q: Tensor) -> None:
    """W <- W - Q^T (Q W) for W [d_model, d_in] that writes into the residual stream."""
    w = weight.float()
    weight.copy_(w - q.T @ (q @ w))


@torch.no_grad()
def orthogonalize_(
    hf_model: nn.Module, basis: Float[Tensor, "n_dirs d_model"] | Float[Tensor, "d_model"]
) -> nn.Module:
    """Project span(basis) out of every residual-stream write of a plain HF causal LM, in place.

    Afterwards the model computes what the original computes under `Ablation(basis)` at the default
    sites of every layer. Tied embeddings are untied first (`config.tie_word_embeddings=False`), so the
    unembedding is unchanged. Returns `hf_model`."""
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise ValueError(f"expected a Hugging Face causal LM (with .config), got {type(hf_model).__name__}")
    d_model = config.get_text_config().hidden_size
    if basis.shape[-1] != d_model:
        raise ValueError(
            f"the basis has d_model={basis.shape[-1]} but the model has d_model={d_model}; "
            f"it was computed on another model"
        )
    layers = _decoder_layers(hf_model)
    writers = [
        _residual_writer(layer, path, i)
        for i, layer in enumerate(layers)
        for path in ("self_attn.o_proj", "mlp.down_proj")
    ]
    post_norms = [n for n in _POST_SUBLAYER_NORMS if hasattr(layers[0], n)]
    if post_norms:
        raise ValueError(
            f"{type(hf_model).__name__} normalises sublayer outputs ({post_norms[0]}) before adding them to the "
            f"residual stream, so projecting the weights cannot reproduce the ablation; use hook ablation instead"
        )
    embedding = hf_model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding) or embedding.weight.shape[1] != d_model:
        raise ValueError(
            f"the input embedding is {type(embedding).__name__}; expected an nn.Embedding of width d_model={d_model} "
            f"(pass the unwrapped HF model from `models.load_hf`)"
        )
    q = orthonormal_basis(basis.detach().float()).to(embedding.weight.device)

    _untie_unembedding(hf_model, embedding)
    _project_rows_(embedding.weight, q)
    for linear in writers:
        qd = q.to(linear.weight.device)
        _project_columns_(linear.weight, qd)
        if linear.bias is not None:
            _project_rows_(linear.bias[None], qd)
    return hf_model


def export_orthogonalized(
    name: str,
    basis: Float[Tensor, "n_dirs d_model"] | Float[Tensor, "d_model"],
    out_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a HF checkpoint of `name` (with `adapter` merged) with span(basis) projected out of its weights.

    The folder loads anywhere HF checkpoints load, including `load_model(str(out_dir))`."""
    return export_checkpoint(name, out_dir, adapter=adapter, basis=basis, dtype=dtype, overwrite=overwrite)


def export_checkpoint(
    name: str,
    out_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    basis: Float[Tensor, "n_dirs d_model"] | Float[Tensor, "d_model"] | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a plain HF checkpoint of `name` with `adapter` merged into its weights and, if `basis` is
    given, span(basis) projected out of them. It is written to a temporary folder next to `out_dir` and
    renamed into place, so a crash leaves no half-written model."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; choose a new folder or pass overwrite=True")
    hf_model, tokenizer = load_hf(name, dtype=dtype)
    hf_model.to(dtype)  # tiny-llama is built in float32 whatever dtype asks
    if adapter is not None:
        hf_model = _merge_adapter(hf_model, adapter, name)
    if basis is not None:
        orthogonalize_(hf_model, basis)

    with atomic_folder(out_dir) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if basis is not None:
            save_file({"basis": basis.detach().reshape(-1, basis.shape[-1]).float().cpu().contiguous()}, tmp / BASIS_FILE)
            record = {"base_model": name, "adapter": None if adapter is None else str(adapter),
                      "n_dirs": int(basis.reshape(-1, basis.shape[-1]).shape[0]), "d_model": int(basis.shape[-1])}
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def _merge_adapter(hf_model: nn.Module, adapter: str | Path, name: str) -> nn.Module:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(hf_model, str(adapter)).merge_and_unload()
    except (RuntimeError, ValueError, OSError) as err:
        raise ValueError(
            f"cannot merge the LoRA adapter in {adapter} into {name!r}: {err}. Export with the base model the "
            f"adapter was trained on."
        ) from err
