"""The question-answering model: loading it for any supported family, the inputs each family takes, how
features run through it (padded or packed batches) and how its head's outputs become the decoder's arrays.

Why a module of its own: features -> tensors -> model -> named arrays is the step between utils_squad.py
(features) and squad_metrics.py (answers), and both the command line (run_squad.py: training and
evaluation) and qa_pipeline.py (raw questions) take it. The variants are objects chosen once:
  batching  PaddedBatches (length-grouped, padded to the longest) or PackedBatches (packing.py: whole
            features in fixed-size token streams); both give plan(), tensors() and forward().
  head      SpanHead (start/end logits per token) or BeamHead (XLNet/XLM's beam search: top-k starts and
            ends per feature, and an answerability logit); both give inputs(), arrays() and decode().
Every batch carries ``source_index``: the position of each of its tokens in the features' flat arrays
(-1 for padding), so outputs of any batching go back to the features the same way.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, XLMForQuestionAnswering, XLNetForQuestionAnswering

import atomic_io
import modeling_relative
import packing
import squad_metrics
import utils_squad

logger = logging.getLogger("run_squad")

# Model types whose classic inputs carry no token type ids (the classic script's list).
NO_TOKEN_TYPES = {"xlm", "roberta", "distilbert", "camembert", "bart", "longformer", "xlm-roberta", "modernbert"}
BEAM_HEAD_TYPES = {"xlnet", "xlm"}


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **source.kwargs())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--tokenizer_name {name}: cannot load a tokenizer ({atomic_io.first_line(exc)})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{name}: a fast tokenizer (tokenizer.json) is required for character offsets")
    # Casing through the tokenizer's normalizer, never by lower-casing text: offsets stay exact.
    return utils_squad.apply_do_lower_case(tokenizer, do_lower_case)


def uses_beam_head(model_type: str, simple_span_head: bool) -> bool:
    return model_type in BEAM_HEAD_TYPES and not simple_span_head


def load_model(path: str, config, source: ModelSource, beam_head: bool, attn_implementation: str | None = None,
               dtype: torch.dtype = torch.float32):
    """The QA model for this config: beam head for XLNet/XLM, relative positions for such BERTs.

    float32 by default whatever the checkpoint's dtype (master weights for training: torch.amp computes in
    half precision); a model loaded only to evaluate on a GPU may take bf16/fp16 weights.
    """
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
# Heads: model outputs -> the decoder's named arrays
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """The decoder's settings (the --n_best_size family of flags)."""

    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0


def _to_host(outputs: list[dict]) -> dict[str, np.ndarray]:
    """Every batch's device outputs as host arrays, in one copy per name (the evaluation's only sync)."""
    if not outputs:
        return {}
    joined = {name: torch.cat([o[name] for o in outputs]) for name in outputs[0]}
    return {name: (t.float() if t.is_floating_point() else t).cpu().numpy() for name, t in joined.items()}


class SpanHead:
    """Start and end logits per token: the plain QA head of every family."""

    beam = False

    def inputs(self, batch: dict, training: bool, version_2: bool) -> dict:
        return {"start_positions": batch["start_positions"], "end_positions": batch["end_positions"]} if training else {}

    def outputs(self, out, batch: dict) -> dict[str, torch.Tensor]:
        """This batch's logits with the flat token position of each (-1 for padding), left on the device."""
        return {"token": batch["source_index"].reshape(-1), "start_logits": out.start_logits.detach().reshape(-1),
                "end_logits": out.end_logits.detach().reshape(-1)}

    def collect(self, outputs: list[dict]) -> dict[str, np.ndarray]:
        """One process's outputs on the host, padding dropped."""
        arrays = _to_host(outputs)
        if not arrays:
            return {}
        real = arrays["token"] >= 0
        return {name: values[real] for name, values in arrays.items()}

    def decode(self, examples, features, parts: list[dict], decoding: Decoding):
        """Predictions, n-best lists and null odds from the outputs of every process."""
        parts = [p for p in parts if p]
        chunks = [{"source_index": p["token"]} for p in parts]
        n = int(features.feature_start[-1])
        start = packing.unpack_logits([p["start_logits"] for p in parts], chunks, n)
        end = packing.unpack_logits([p["end_logits"] for p in parts], chunks, n)
        return squad_metrics.compute_predictions_logits(
            examples, features, start, end, n_best_size=decoding.n_best_size,
            max_answer_length=decoding.max_answer_length, version_2_with_negative=decoding.version_2_with_negative,
            null_score_diff_threshold=decoding.null_score_diff_threshold)


BEAM_ARRAYS = ("start_top_log_probs", "start_top_index", "end_top_log_probs", "end_top_index", "cls_logits")


class BeamHead:
    """XLNet/XLM's beam-search head: per feature the top starts, the top ends of each, an answerability logit."""

    beam = True

    def inputs(self, batch: dict, training: bool, version_2: bool) -> dict:
        inputs = {"cls_index": batch["cls_index"], "p_mask": batch["p_mask"]}
        if training:
            inputs.update(start_positions=batch["start_positions"], end_positions=batch["end_positions"])
            if version_2:
                inputs["is_impossible"] = batch["is_impossible"]
        return inputs

    def outputs(self, out, batch: dict) -> dict[str, torch.Tensor]:
        """Per feature of the batch, its indexes shifted back from the left padding to unpadded positions."""
        arrays = {name: getattr(out, name).detach() for name in BEAM_ARRAYS}
        shift = batch["left_pad"][:, None]
        arrays["start_top_index"] = arrays["start_top_index"] - shift
        arrays["end_top_index"] = arrays["end_top_index"] - shift
        arrays["feature"] = batch["feature_index"]
        return arrays

    def collect(self, outputs: list[dict]) -> dict[str, np.ndarray]:
        return _to_host(outputs)

    def decode(self, examples, features, parts: list[dict], decoding: Decoding):
        parts = [p for p in parts if p]
        order = np.concatenate([p["feature"] for p in parts])
        if sorted(order.tolist()) != list(range(len(features))):
            raise ValueError(f"beam outputs cover {len(set(order.tolist()))} of {len(features)} features")
        arrays = {name: np.concatenate([p[name] for p in parts])[np.argsort(order)] for name in BEAM_ARRAYS}
        start_n_top = arrays["start_top_log_probs"].shape[1]
        return squad_metrics.compute_predictions_log_probs(
            examples, features, *(arrays[name] for name in BEAM_ARRAYS), n_best_size=decoding.n_best_size,
            max_answer_length=decoding.max_answer_length, start_n_top=start_n_top,
            end_n_top=arrays["end_top_log_probs"].shape[1] // start_n_top)


def make_head(beam: bool) -> SpanHead | BeamHead:
    return BeamHead() if beam else SpanHead()


# --------------------------------------------------------------------------------------------
# Batching: features -> tensors -> forward
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanOutput:
    """What a packed forward returns: logits over the token stream, and the loss when training."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: torch.Tensor | None = None


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Length-sorted batches: little padding, and the same batches whatever the number of processes."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def to_device(batch: dict, device) -> dict:
    """Tensors to the device, without waiting for the copy (pinned host memory makes it asynchronous)."""
    return packing.batch_to_device(batch, device, non_blocking=True)


def pinned(batch: dict, device: torch.device) -> dict:
    """The batch in pinned host memory when it is going to a GPU (a non-blocking copy); else as it is."""
    if device.type != "cuda":
        return batch
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


_DONE = object()


class Prefetcher:
    """Runs ``build`` on each job in a background thread, up to ``depth`` jobs ahead, and yields the results
    in order: the batches of step n+1 are built (and pinned, for a non-blocking copy) while step n runs.
    An exception in the thread is raised where its result would have been yielded; close() stops the thread.
    """

    def __init__(self, jobs: Iterable, build: Callable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(jobs), build), daemon=True,
                                        name="batch-prefetch")
        self._thread.start()

    def _run(self, jobs: Iterator, build: Callable) -> None:
        try:
            for job in jobs:
                if not self._put(build(job)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class PaddedBatches:
    """Length-grouped batches padded to their longest feature (rounded up to 8)."""

    batch_size: int
    head: SpanHead | BeamHead
    model_type: str
    version_2: bool = False
    lang_id: int = 0
    pad_to_multiple_of: int = 8  # 64 under torch.compile: a handful of widths, so a handful of compilations
    grouped: bool = True  # training batches of similar lengths; False: random batches, as the classic script
    packed = False

    def plan(self, lengths: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        """Feature indices per batch: shuffled by seed for training, deterministic (sorted) without."""
        if seed is None:
            return eval_batches(lengths, self.batch_size)
        return utils_squad.length_grouped_batches(lengths, self.batch_size, shuffle=True, seed=seed,
                                                  mega_batch_mult=50 if self.grouped else 1)

    def tensors(self, features, idx: np.ndarray, with_labels: bool) -> dict:
        arrays = utils_squad.collate(features, idx, with_labels, pad_to_multiple_of=self.pad_to_multiple_of)
        batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
        batch["source_index"] = torch.from_numpy(padded_source_index(features, idx, batch["input_ids"].shape[1]))
        batch["feature_index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return batch

    def inputs(self, batch: dict, training: bool) -> dict:
        """The tensors this model family takes (the classic script's per-type rules)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.model_type not in NO_TOKEN_TYPES:
            inputs["token_type_ids"] = batch["token_type_ids"]
        if self.model_type == "xlm":
            inputs["langs"] = torch.full_like(batch["input_ids"], self.lang_id)
        return {**inputs, **self.head.inputs(batch, training, self.version_2)}

    def forward(self, model, batch: dict, training: bool):
        return model(**self.inputs(batch, training))


def padded_source_index(features, idx: np.ndarray, width: int) -> np.ndarray:
    """[rows, width] flat token position of each cell of a padded batch, -1 for padding."""
    lengths = features.lengths()[idx]
    left = (width - lengths) if features.padding_side == "left" else np.zeros(len(idx), dtype=np.int64)
    out = np.full((len(idx), width), -1, dtype=np.int64)
    cols = np.arange(width)[None, :] - left[:, None]
    inside = (cols >= 0) & (cols < lengths[:, None])
    out[inside] = (features.feature_start[idx][:, None] + cols)[inside]
    return out


@dataclass(frozen=True)
class PackedBatches:
    """Whole features packed into streams of ``tokens`` tokens (packing.py): no compute on padding."""

    batch_size: int
    head: SpanHead
    model_type: str
    tokens: int  # tokens per pack
    slots: int  # feature slots per pack
    max_seqlen: int  # longest feature
    position_offset: int = 0  # RoBERTa's positions start after the padding index
    packed = True

    def plan(self, lengths: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        if seed is None:
            return packing.pack_features(lengths, self.tokens, max_features=self.slots)
        rng = np.random.default_rng(seed)
        packs = packing.pack_features(lengths, self.tokens, max_features=self.slots,
                                      order=rng.permutation(len(lengths)))
        return [packs[i] for i in rng.permutation(len(packs))]  # first-fit fills later packs with leftovers

    def tensors(self, features, idx: np.ndarray, with_labels: bool) -> dict:
        return packing.make_packed_batch(features, idx, self.tokens, self.slots, self.max_seqlen,
                                         with_labels=with_labels, position_offset=self.position_offset)

    def forward(self, model, batch: dict, training: bool) -> SpanOutput:
        start, end = packing.packed_forward(model, batch, self.model_type)
        return SpanOutput(start, end, packing.packed_qa_loss(start, end, batch) if training else None)


class PackingUnsupported(ValueError):
    """--packing asked for a model whose attention cannot be swapped for the packed kernels."""


def check_packing(config, model=None) -> None:
    """Said before any feature is built (from the config), and checked again on the loaded model.

    Relative-position configs are packable for BERT only, through modeling_relative's model (its attention
    takes distances inside each feature); load_question_answering_model builds that model for them."""
    relative = modeling_relative.is_relative_position_config(config)
    supported = (config.model_type in packing.SUPPORTED_MODEL_TYPES
                 and (not relative or config.model_type in modeling_relative.SUPPORTED_MODEL_TYPES)
                 and (model is None or packing.supports_packing(model)))
    if not supported:
        kind = f" ({modeling_relative.position_embedding_type(config)})" if relative else ""
        raise PackingUnsupported(
            f"--packing supports {', '.join(packing.SUPPORTED_MODEL_TYPES)} (bert also with relative_key or "
            f"relative_key_query positions), not {config.model_type}{kind}: drop --packing")


def enable_packing(model, attention_dropout: bool) -> None:
    """Switch a loaded model's attention to the packed kernels (refused for a model that cannot take them)."""
    check_packing(model.config, model)
    packing.enable_packed_attention(model, attention_dropout=attention_dropout)


def make_batching(head, config, features, batch_size: int, *, packed: bool, pack_tokens: int, max_seq_length: int,
                  version_2: bool, lang_id: int, compiled: bool = False, grouped: bool = True):
    """Padded batches, or packs of a size fixed for the whole run from the features' lengths."""
    if not packed:
        return PaddedBatches(batch_size, head, config.model_type, version_2, lang_id, 64 if compiled else 8, grouped)
    lengths = features.lengths()
    tokens = pack_tokens or max(max_seq_length, int(math.ceil(batch_size * lengths.mean() / 64)) * 64)
    return PackedBatches(batch_size, head, config.model_type, tokens=tokens, slots=tokens // int(lengths.min()),
                         max_seqlen=int(lengths.max()), position_offset=packing.position_offset(config))


# --------------------------------------------------------------------------------------------
# Memory: the largest batch that fits (--auto_find_batch_size)
# --------------------------------------------------------------------------------------------


def smaller_batch(size: int) -> int:
    """The largest divisor of `size` at most half of it (1 for a prime; `size` itself for 1), so that
    accumulating size // divisor micro-batches keeps the global batch exactly."""
    return next((d for d in range(size // 2, 0, -1) if size % d == 0), size)


def probe_memory(model, batching, features, device, amp, extra_copies: int = 0) -> bool:
    """Whether the worst batch of `batching` fits: its longest features (or a full pack) forward and backward
    in training mode, beside room for Adam's two moments (and `extra_copies` more, for DDP's gradient
    buckets). Leaves no trace: gradients are dropped and the random state is restored."""
    lengths = features.lengths()
    idx = batching.plan(lengths)[0] if batching.packed else np.argsort(lengths, kind="stable")[-batching.batch_size:]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    reserved: list = []
    try:
        reserved = [torch.zeros_like(p) for p in model.parameters() if p.requires_grad for _ in range(2 + extra_copies)]
        model.train()
        batch = to_device(batching.tensors(features, idx, with_labels=True), device)
        with amp:
            loss = batching.forward(model, batch, training=True).loss
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
