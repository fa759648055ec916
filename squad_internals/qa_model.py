"""The question-answering model of any supported family: loading it (config, fast tokenizer, weights, the beam
head for XLNet/XLM, relative positions for such BERTs), its parameter groups for the optimizer, which families
can take packed batches, and the largest batch that fits in GPU memory (--auto_find_batch_size).

Why a module of its own: run_squad.py (training and evaluation) and qa_pipeline.py (raw questions) load and
prepare the model the same way, and what depends on the model's family and naming (decay rules, layer depths,
packing support) belongs beside the loading. How batches reach the model is batching.py's.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    XLMForQuestionAnswering,
    XLNetForQuestionAnswering,
    modeling_utils,
)

import utils_squad
from squad_internals import (
    atomic_io,
    batching,
    checkpoints,
    model_families,
    modeling_relative,
    output_folder,
    packing,
)

logger = logging.getLogger(__name__)

BEAM_HEAD_TYPES = model_families.BEAM_HEAD_TYPES


class ModelLoadError(ValueError):
    """A model, config or tokenizer that cannot be loaded or used as asked (exit code 2)."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where the config, tokenizer and weights come from (the --model_name_or_path family of flags)."""

    name_or_path: str
    config_name: str = ""
    tokenizer_name: str = ""
    cache_dir: str = ""
    trust_remote_code: bool = False

    def kwargs(self) -> dict:
        return {"cache_dir": self.cache_dir or None, "trust_remote_code": self.trust_remote_code}


def load_config(source: ModelSource, model_type: str | None = None):
    try:
        config = AutoConfig.from_pretrained(source.config_name or source.name_or_path, **source.kwargs())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--model_name_or_path {source.name_or_path}: cannot load a config "
                             f"({atomic_io.first_line(exc)})") from exc
    if model_type and model_type != config.model_type:
        raise ModelLoadError(f"--model_type {model_type} disagrees with the config of {source.name_or_path} "
                             f"(model_type {config.model_type})")
    return config


def load_tokenizer(source: ModelSource, do_lower_case: bool):
    name = source.tokenizer_name or source.name_or_path
    if Path(name).is_dir():  # transformers 5 makes an empty tokenizer of a folder without tokenizer files
        problem = output_folder.model_folder_problem(Path(name), config=False)
        if problem is not None:
            raise ModelLoadError(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **source.kwargs())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--tokenizer_name {name}: cannot load a tokenizer ({atomic_io.first_line(exc)})") from exc
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelLoadError(f"{name}: its tokenizer holds only its {len(tokenizer)} special tokens (no vocabulary "
                             "was found): every word would be unknown")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{name}: a fast tokenizer (tokenizer.json) is required for character offsets")
    # Casing through the tokenizer's normalizer, never by lower-casing text: offsets stay exact.
    return utils_squad.apply_do_lower_case(tokenizer, do_lower_case)


def uses_beam_head(model_type: str, simple_span_head: bool) -> bool:
    return model_type in BEAM_HEAD_TYPES and not simple_span_head


LOAD_REPORT_NAMES = 4  # weight names shown per kind in the one-line load report, then "and N more"
_SILENT = logging.getLogger(f"{__name__}.transformers-load-report")  # its table, computed but never shown
_SILENT.disabled = True


def _fold(keys) -> list[str]:
    """Weight names with their layer indices folded: encoder.layer.{0-5}.output.dense.weight for six layers."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        # One index folded (the first number between dots); names with none stand alone.
        match = re.search(r"(?<=\.)(\d+)(?=\.|$)", key)
        pattern = key if match is None else f"{key[:match.start()]}{{}}{key[match.end():]}"
        groups.setdefault(pattern, []).append(int(match.group(1)) if match else -1)
    folded = []
    for pattern, indices in groups.items():
        indices = sorted(indices)
        if len(indices) == 1 or indices[0] < 0:
            folded.extend(pattern.replace("{}", str(i)) if i >= 0 else pattern for i in indices)
        elif indices == list(range(indices[0], indices[-1] + 1)):
            folded.append(pattern.replace("{}", f"{{{indices[0]}-{indices[-1]}}}"))
        else:
            folded.append(pattern.replace("{}", "{" + ",".join(map(str, indices)) + "}"))
    return sorted(folded)


def _names(keys) -> str:
    """A few weight names (layer indices folded), then how many more."""
    folded = _fold(keys)
    shown = ", ".join(folded[:LOAD_REPORT_NAMES])
    return shown + (f" and {len(folded) - LOAD_REPORT_NAMES} more" if len(folded) > LOAD_REPORT_NAMES else "")


def describe_load(path: str, info) -> str | None:
    """transformers' LOAD REPORT in one line: which weights the model got newly initialised (not in the
    checkpoint, or of another shape) and which of the checkpoint's it left unused; None when it used them all."""
    new, resized, unused = set(info.missing_keys), {k[0] for k in info.mismatched_keys}, set(info.unexpected_keys)
    parts = []
    if new:
        parts.append(f"{len(new)} weights newly initialised ({_names(new)})")
    if resized:
        parts.append(f"{len(resized)} re-initialised for another shape ({_names(resized)})")
    if unused:
        parts.append(f"{len(unused)} unused ({_names(unused)})")
    return f"loaded {path}: {', '.join(parts)}" if parts else None


@contextlib.contextmanager
def load_report_in_one_line():
    """While loading, transformers' LOAD REPORT (a table, with terminal colour codes even in a log file) is
    replaced by one line of ours per load (describe_load). A report that precedes an error (a failed weight
    conversion, a shape mismatch not allowed) keeps transformers' table: it is the error's detail."""
    original = getattr(modeling_utils, "log_state_dict_report", None)
    if original is None:  # another transformers layout: its own report stands
        yield
        return

    def one_line(model, pretrained_model_name_or_path, ignore_mismatched_sizes, loading_info, logger=None):
        failing = loading_info.error_msgs or loading_info.conversion_errors or (
            loading_info.mismatched_keys and not ignore_mismatched_sizes)
        original(model=model, pretrained_model_name_or_path=pretrained_model_name_or_path,
                 ignore_mismatched_sizes=ignore_mismatched_sizes, loading_info=loading_info,
                 logger=logger if failing else _SILENT)
        line = describe_load(str(pretrained_model_name_or_path), loading_info)
        if line:
            logging.getLogger(__name__).info(line)  # (the parameter `logger` is transformers')

    modeling_utils.log_state_dict_report = one_line
    try:
        yield
    finally:
        modeling_utils.log_state_dict_report = original


@load_report_in_one_line()
def load_model(path: str, config, source: ModelSource, beam_head: bool, attn_implementation: str | None = None,
               dtype: torch.dtype = torch.float32):
    """The QA model for this config: beam head for XLNet/XLM, relative positions for such BERTs.

    float32 by default whatever the checkpoint's dtype (master weights for training: torch.amp computes in
    half precision); a model loaded only to evaluate on a GPU may take bf16/fp16 weights. A damaged weights file
    is named first (checkpoints.WeightsUnreadable), before transformers reads it.
    """
    checkpoints.check_model_files(Path(path))
    kwargs = {**source.kwargs(), "dtype": dtype}
    try:
        if beam_head:
            cls = XLNetForQuestionAnswering if config.model_type == "xlnet" else XLMForQuestionAnswering
            return cls.from_pretrained(path, config=config, **kwargs)
        return modeling_relative.load_question_answering_model(
            path, config=config, attn_implementation=attn_implementation, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot load the model ({atomic_io.first_line(exc)})") from exc


# --------------------------------------------------------------------------------------------
# Parameter groups (which parameter is which layer, in every family's naming)
# --------------------------------------------------------------------------------------------

# Encoder layer i in the naming of every supported family (BERT-likes, XLNet, DistilBERT: layer;
# ALBERT: albert_layer_groups; XLM: attentions/ffns/layer_norm1/layer_norm2).
LAYER_RE = re.compile(r"\.(?:layer|layers|albert_layer_groups|attentions|ffns|layer_norm1|layer_norm2)\.(\d+)\.")
# Below the first layer: embeddings and what only transforms them (ALBERT's and ELECTRA's projections,
# XLNet's mask_emb, XLM's layer_norm_emb, DeBERTa's relative-position table and its encoder.LayerNorm).
EMBEDDING_RE = re.compile(r"embed|_emb\b|_emb\.|\bencoder\.LayerNorm\.")


def decays_weight(name: str) -> bool:
    """The classic rule (no decay on biases and LayerNorm weights), for every family's norm naming."""
    return not (name.endswith("bias") or "norm" in name.lower())


def decay_depths(model) -> int:
    """Distinct layer stacks: ALBERT's layers share the weights of num_hidden_groups groups."""
    config = model.config
    if config.model_type == "albert":
        return int(config.num_hidden_groups)
    return int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)) or 0)


def parameter_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i+1 for encoder layer i, num_layers+1 for everything above (pooler, QA head)."""
    match = LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if EMBEDDING_RE.search(name):
        return 0
    return num_layers + 1


def parameter_groups(model, learning_rate: float, weight_decay: float, layerwise_decay: float) -> list[dict]:
    """No decay on biases and norm weights; each layer's rate the next higher layer's times layerwise_decay."""
    num_layers = decay_depths(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = parameter_depth(name, num_layers) if layerwise_decay < 1.0 else num_layers + 1
        no_decay = not decays_weight(name)
        key = (depth, no_decay)
        if key not in groups:
            scale = layerwise_decay ** (num_layers + 1 - depth)
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr": learning_rate * scale, "depth": depth}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------------------------
# Packing: which families can take packed batches
# --------------------------------------------------------------------------------------------


class PackingUnsupported(ValueError):
    """--packing asked for a model whose attention cannot be swapped for the packed kernels."""


def check_packing(config, model=None) -> None:
    """Said before any feature is built (from the config), and checked again on the loaded model.

    Relative-position configs are packable for BERT only, through modeling_relative's model (its attention
    takes distances inside each feature); load_question_answering_model builds that model for them."""
    relative = modeling_relative.is_relative_position_config(config)
    family = model_families.family(config.model_type)
    supported = (family.packing is not None and (not relative or family.relative_positions)
                 and (model is None or packing.supports_packing(model)))
    if not supported:
        kind = f" ({modeling_relative.position_embedding_type(config)})" if relative else ""
        raise PackingUnsupported(
            f"--packing supports {', '.join(model_families.PACKING_TYPES)} (bert also with relative_key or "
            f"relative_key_query positions), not {config.model_type}{kind}: drop --packing")


def enable_packing(model, attention_dropout: bool) -> None:
    """Switch a loaded model's attention to the packed kernels (refused for a model that cannot take them)."""
    check_packing(model.config, model)
    packing.enable_packed_attention(model, attention_dropout=attention_dropout)


# --------------------------------------------------------------------------------------------
# Memory: the largest batch that fits (--auto_find_batch_size)
# --------------------------------------------------------------------------------------------


def smaller_batch(size: int) -> int:
    """The largest divisor of `size` at most half of it (1 for a prime; `size` itself for 1), so that
    accumulating size // divisor micro-batches keeps the global batch exactly."""
    return next((d for d in range(size // 2, 0, -1) if size % d == 0), size)


def probe_memory(model, batches, features, device, amp, extra_copies: int = 0) -> bool:
    """Whether the worst batch of `batches` (a batching strategy) fits: its longest features (or a full pack) forward and backward
    in training mode, beside room for Adam's two moments (and `extra_copies` more, for DDP's gradient
    buckets). Leaves no trace: gradients are dropped and the random state is restored."""
    lengths = features.lengths()
    idx = batches.plan(lengths)[0] if batches.packed else np.argsort(lengths, kind="stable")[-batches.batch_size:]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    reserved: list = []
    try:
        reserved = [torch.zeros_like(p) for p in model.parameters() if p.requires_grad for _ in range(2 + extra_copies)]
        model.train()
        batch = batching.to_device(batches.tensors(features, idx, with_labels=True), device)
        with amp:
            loss = batches.forward(model, batch, training=True).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del reserved
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)  # the run's peak is training's, not the probe's


def find_batch_size(fits: Callable[[int], bool], size: int, accumulation: int, group=None) -> tuple[int, int]:
    """Halve the per-device batch until `fits` (every rank agreeing, over `group`), raising the accumulation so
    the global batch stays; (0, accumulation) when even one feature does not fit."""
    while True:
        ok = fits(size)
        if group:
            flag = torch.tensor([int(ok)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=group)
            ok = bool(flag.item())
        if ok:
            return size, accumulation
        smaller = smaller_batch(size)
        if smaller == size:
            return 0, accumulation
        logger.warning("--auto_find_batch_size: %d features per device do not fit in GPU memory; trying %d with "
                       "--gradient_accumulation_steps %d (the same global batch)", size, smaller,
                       accumulation * size // smaller)
        size, accumulation = smaller, accumulation * size // smaller
