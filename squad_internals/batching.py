"""The whole path of a batch: features -> an epoch's plan -> padded or packed arrays -> pinned tensors, built
ahead in a thread -> the inputs a model family and its head take; and back: the head's outputs -> host arrays
in the features' layout, for decoding.py.

Why a module of its own: training (run_squad.train), evaluation (run_squad.infer), the memory probe and
qa_pipeline.py all move features through a model the same way, and this is where the speed of that path is
decided (padding, packing, shapes, host work). utils_squad.py stops at features; packing.py holds only the
packed attention and the packed loss that packed batches need.

One small interface, two strategies chosen once (make_batching):
  PaddedBatches  batches of similar lengths padded to the longest (rounded up), or random batches
  PackedBatches  whole features packed into fixed-size token streams (no compute on padding)
both give ``plan(lengths, seed)`` (feature indices per batch: shuffled by seed for training, sorted without),
``tensors(features, idx, with_labels)`` (CPU tensors) and ``forward(model, batch, training)`` (the model's
output, with the loss when training), and carry a ``head``:
  SpanHead  start and end logits per token (every family)
  BeamHead  XLNet/XLM's beam search: top starts, top ends of each, an answerability logit
whose ``inputs()`` are the labels and masks it takes, ``outputs()`` what it returns per batch (left on the
device), ``collect()`` those on the host, ``decode()`` the answers (decoding.py).
Every batch carries ``source_index``: the position of each of its tokens in the features' flat arrays (-1 for
padding), so outputs of any batching go back to the features the same way. Training walks optimizer steps
(``epoch_plan``, ``optimizer_steps``: a deterministic function of the seed, so resuming is the plan from a
position on) of ``TrainBatches`` (micro-batches per device and per step, and the batching built for them);
``Prefetcher`` builds the next step's tensors while the current one runs.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from squad_internals import decoding, model_families, modeling_relative, packing
from utils_squad import SquadFeatures, ragged_index

# Model types whose classic inputs carry no token type ids (the classic script's list).
NO_TOKEN_TYPES = model_families.NO_TOKEN_TYPES
# Model types whose transformers forward takes a prepared 4-D key-padding mask as it is (tested equal to the 2-D
# mask): given one, transformers neither builds a mask nor reads the 2-D one on the host to see whether it
# could skip it (a GPU sync every forward). Only attention functions that read a boolean mask as such take it:
# SDPA (and the packed attention's padded fallback, which is SDPA); eager attention would add it as numbers.
PREPARED_MASK_TYPES = model_families.PREPARED_MASK_TYPES
PREPARED_MASK_ATTENTION = {"sdpa", packing.PACKED_ATTENTION, packing.PACKED_ATTENTION_NO_DROPOUT}


def takes_prepared_mask(model_type: str, attn_implementation: str | None) -> bool:
    """Whether padded batches for this family and attention function carry a prepared 4-D mask."""
    return model_type in PREPARED_MASK_TYPES and (attn_implementation or "sdpa") in PREPARED_MASK_ATTENTION


# --------------------------------------------------------------------------------------------
# Plans: which features go into which batch
# --------------------------------------------------------------------------------------------


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Length-sorted batches: little padding, and the same batches whatever the number of processes."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def length_grouped_batches(lengths, batch_size: int, seed: int, mega_batch_mult: int = 50) -> list[np.ndarray]:
    """Training batches of feature indices whose lengths are similar, so dynamic padding wastes little.

    A random permutation by seed, cut into chunks of mega_batch_mult * batch_size sorted by length (longest
    first), split into batches, the batch order shuffled. mega_batch_mult 1: the classic script's random
    batches (the permutation cut into consecutive batches, sorted inside, which changes nothing).
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    mega = max(1, mega_batch_mult) * batch_size
    order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                            for chunk in np.array_split(perm, range(mega, n, mega))]) if n else perm
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches


class _MaxTree:
    """Segment tree over bin capacities: find the first bin with room for `need` in O(log bins)."""

    def __init__(self, num_bins: int, capacity: int):
        self.size = 1 << max(1, math.ceil(math.log2(max(num_bins, 1))))
        self.tree = np.zeros(2 * self.size, dtype=np.int64)
        self.tree[self.size : self.size + num_bins] = capacity
        for node in range(self.size - 1, 0, -1):
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])

    def first_fit(self, need: int) -> int:
        if self.tree[1] < need:
            return -1
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        return node - self.size

    def set(self, leaf: int, value: int) -> None:
        node = leaf + self.size
        self.tree[node] = value
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2


def pack_features(
    lengths: np.ndarray,
    tokens_per_pack: int,
    max_features: int | None = None,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Group feature indices into packs of at most `tokens_per_pack` tokens (and `max_features` features).

    First-fit decreasing by default (longest first, ties by index: deterministic and within a few
    percent of optimal). With `order` (e.g. a seeded permutation for training) features are placed
    first-fit in that order instead, so packs differ between epochs. Indices inside a pack are sorted.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"pack_features: lengths must be 1-D, got shape {lengths.shape}")
    if len(lengths) and int(lengths.max()) > tokens_per_pack:
        raise ValueError(
            f"pack_features: a feature of {int(lengths.max())} tokens exceeds tokens_per_pack={tokens_per_pack}"
        )
    if len(lengths) and int(lengths.min()) < 1:
        raise ValueError("pack_features: every feature needs at least one token")
    if order is None:
        order = np.lexsort((np.arange(len(lengths)), -lengths))
    else:
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(len(lengths))):
            raise ValueError("pack_features: order must be a permutation of range(len(lengths))")
    max_features = max_features or tokens_per_pack
    # Upper bound on the number of bins: one per feature.
    tree = _MaxTree(len(lengths), tokens_per_pack)
    room = np.full(len(lengths), tokens_per_pack, dtype=np.int64)
    count = np.zeros(len(lengths), dtype=np.int64)
    members: list[list[int]] = []
    for index in order.tolist():
        need = int(lengths[index])
        bin_id = tree.first_fit(need)
        if bin_id == len(members):
            members.append([])
        members[bin_id].append(index)
        room[bin_id] -= need
        count[bin_id] += 1
        tree.set(bin_id, 0 if count[bin_id] >= max_features else int(room[bin_id]))
    return [np.array(sorted(m), dtype=np.int64) for m in members]


def plan_packs(lengths: np.ndarray, tokens_per_pack: int, order=None) -> tuple[list, int]:
    """pack_features plus the fixed slot count to give make_packed_batch for all of them."""
    packs = pack_features(lengths, tokens_per_pack, order=order)
    max_features = max((len(p) for p in packs), default=1)
    return packs, max_features


# --------------------------------------------------------------------------------------------
# Arrays: padded batches and packs (numpy, then CPU tensors)
# --------------------------------------------------------------------------------------------


def collate(features: SquadFeatures, indices, with_labels: bool, pad_to_multiple_of: int = 8) -> dict:
    """Arrays for features[indices], padded to the longest (rounded up) on the tokenizer's side.

    Positions (start/end/cls_index) are shifted by the left padding; "left_pad" tells by how much.
    """
    indices = np.asarray(indices, dtype=np.int64)
    lengths = features.lengths()[indices]
    width = int(lengths.max()) if len(indices) else 0
    if pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of
    rows = len(indices)
    left = features.padding_side == "left"
    left_pad = (width - lengths) if left else np.zeros(rows, dtype=np.int64)
    input_ids = np.full((rows, width), features.pad_token_id, dtype=np.int64)
    token_type_ids = np.full((rows, width), features.pad_token_type_id, dtype=np.int64)
    attention_mask = np.zeros((rows, width), dtype=np.int64)
    p_mask = np.ones((rows, width), dtype=np.float32)
    # Scatter all rows at once: flat source positions -> (row, column) in the padded batch.
    total = int(lengths.sum())
    src = ragged_index(features.feature_start[indices], lengths, total)
    row = np.repeat(np.arange(rows), lengths)
    col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(left_pad, lengths)
    input_ids[row, col] = features.input_ids[src]
    token_type_ids[row, col] = features.token_type_ids[src]
    attention_mask[row, col] = 1
    p_mask[row, col] = features.p_mask[src]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "cls_index": features.cls_index[indices].astype(np.int64) + left_pad,
        "p_mask": p_mask,
        "left_pad": left_pad.astype(np.int64),
    }
    if with_labels:
        batch["start_positions"] = features.start_positions[indices].astype(np.int64) + left_pad
        batch["end_positions"] = features.end_positions[indices].astype(np.int64) + left_pad
        batch["is_impossible"] = features.is_impossible[indices].astype(np.float32)
    return batch


# --------------------------------------------------------------------------------------------


def padded_source_index(features, idx: np.ndarray, width: int) -> np.ndarray:
    """[rows, width] flat token position of each cell of a padded batch, -1 for padding."""
    lengths = features.lengths()[idx]
    left = (width - lengths) if features.padding_side == "left" else np.zeros(len(idx), dtype=np.int64)
    out = np.full((len(idx), width), -1, dtype=np.int64)
    cols = np.arange(width)[None, :] - left[:, None]
    inside = (cols >= 0) & (cols < lengths[:, None])
    out[inside] = (features.feature_start[idx][:, None] + cols)[inside]
    return out


def pad_slots_needed(tokens_per_pack: int, max_seqlen: int) -> int:
    """Number of dummy segments that can cover any unused tail of a pack (each at most max_seqlen)."""
    return math.ceil(tokens_per_pack / max_seqlen)


def _slots(indices: np.ndarray, lengths: np.ndarray, tokens_per_pack: int,
           max_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's feature slot (pad tokens: max_features), each slot's row in the features (-1: empty) and its
    offset in the stream."""
    segment_ids = np.full(tokens_per_pack, max_features, dtype=np.int64)
    segment_ids[: int(lengths.sum())] = np.repeat(np.arange(len(indices)), lengths)
    feature_index = np.full(max_features, -1, dtype=np.int64)
    feature_index[: len(indices)] = indices
    token_start = np.zeros(max_features, dtype=np.int64)
    token_start[: len(indices)] = np.cumsum(lengths) - lengths  # each feature's offset in the pack
    return segment_ids, feature_index, token_start


def make_packed_batch(
    features,
    indices: np.ndarray,
    tokens_per_pack: int,
    max_features: int,
    max_seqlen: int,
    with_labels: bool = True,
    position_offset: int = 0,
    pad_token_id: int | None = None,
) -> dict:
    """Build one fixed-shape packed batch (CPU tensors) from SquadFeatures rows `indices`.

    Keys: input_ids, token_type_ids, position_ids [1, T]; cu_seqlens int32 [max_features + pad_slots + 1];
    max_seqlen (int); segment_ids [T] (feature slot per token, pad tokens -> max_features);
    feature_index [max_features] (row in `features`, -1 for an empty slot); feature_valid [max_features];
    token_start [max_features] (slot offset in the stream); start_positions / end_positions
    [max_features] in stream coordinates (with labels); source_index [T] (position in the features'
    flat arrays, -1 for pad); num_features, num_tokens (ints, known without a device sync); prepared_mask (a
    [1, 1, 1, 1] placeholder: see packing.model_kwargs). `position_offset`: padding_idx + 1 for RoBERTa, else 0.
    """
    indices = np.asarray(indices, dtype=np.int64)
    starts = np.asarray(features.feature_start, dtype=np.int64)
    lengths = starts[indices + 1] - starts[indices]
    total = int(lengths.sum())
    _check_pack(len(indices), total, lengths, tokens_per_pack, max_features, max_seqlen)
    stream = _token_stream(features, starts, indices, lengths, tokens_per_pack,
                           features.pad_token_id if pad_token_id is None else pad_token_id)
    position_ids, cu_seqlens = _segments(lengths, total, tokens_per_pack, max_features, max_seqlen)
    stream["position_ids"] = position_ids + position_offset

    segment_ids, feature_index, token_start = _slots(indices, lengths, tokens_per_pack, max_features)
    batch = {name: torch.from_numpy(stream[name]).unsqueeze(0) for name in packing.MODEL_INPUT_KEYS}
    batch.update({
        "cu_seqlens": torch.from_numpy(cu_seqlens),
        "max_seqlen": int(max_seqlen),
        "segment_ids": torch.from_numpy(segment_ids),
        "feature_index": torch.from_numpy(feature_index),
        "feature_valid": torch.from_numpy(feature_index >= 0),
        "token_start": torch.from_numpy(token_start),
        "source_index": torch.from_numpy(stream["source_index"]),
        "num_features": len(indices),
        "num_tokens": total,
        "prepared_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool),  # see packing.model_kwargs
    })
    if with_labels:
        for key in ("start_positions", "end_positions"):
            labels = np.zeros(max_features, dtype=np.int64)
            labels[: len(indices)] = token_start[: len(indices)] + np.asarray(getattr(features, key))[indices]
            batch[key] = torch.from_numpy(labels)
    return batch


def _check_pack(n: int, total: int, lengths: np.ndarray, tokens_per_pack: int, max_features: int,
                max_seqlen: int) -> None:
    if n > max_features:
        raise ValueError(f"make_packed_batch: {n} features exceed max_features={max_features}")
    if total > tokens_per_pack:
        raise ValueError(f"make_packed_batch: {total} tokens exceed tokens_per_pack={tokens_per_pack}")
    if len(lengths) and int(lengths.max()) > max_seqlen:
        raise ValueError(f"make_packed_batch: a feature of {int(lengths.max())} tokens exceeds max_seqlen={max_seqlen}")


def _token_stream(features, starts, indices, lengths, tokens_per_pack: int, pad_id: int) -> dict:
    """input_ids, token_type_ids and source_index of the stream: the features' tokens, then padding."""
    total = int(lengths.sum())
    # Flat source positions of every real token, in pack order.
    source = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in indices]) if len(indices) else (
        np.zeros(0, dtype=np.int64)
    )
    stream = {"input_ids": np.full(tokens_per_pack, pad_id, dtype=np.int64),
              "token_type_ids": np.zeros(tokens_per_pack, dtype=np.int64),
              "source_index": np.full(tokens_per_pack, -1, dtype=np.int64)}
    stream["input_ids"][:total] = np.asarray(features.input_ids)[source]
    stream["token_type_ids"][:total] = np.asarray(features.token_type_ids)[source]
    stream["source_index"][:total] = source
    return stream


def _segments(lengths: np.ndarray, total: int, tokens_per_pack: int, max_features: int, max_seqlen: int):
    """Position ids restarting per segment, and cu_seqlens: real features, then dummy pad segments of
    <= max_seqlen tokens (so every token is computed), then empty ones."""
    offsets_in_pack = np.concatenate([[0], np.cumsum(lengths)])
    position_ids = np.zeros(tokens_per_pack, dtype=np.int64)
    position_ids[:total] = np.arange(total, dtype=np.int64) - np.repeat(offsets_in_pack[:-1], lengths)
    n_pad_slots = pad_slots_needed(tokens_per_pack, max_seqlen)
    pad_tail = tokens_per_pack - total
    pad_lengths = [min(max_seqlen, pad_tail - k * max_seqlen) for k in range(math.ceil(pad_tail / max_seqlen))]
    # Pad tokens get position ids restarting per dummy segment, so they stay within the table.
    for k, n in enumerate(pad_lengths):
        begin = total + k * max_seqlen
        position_ids[begin : begin + n] = np.arange(n)
    seg_lengths = np.zeros(max_features + n_pad_slots, dtype=np.int64)
    seg_lengths[: len(lengths)] = lengths
    seg_lengths[max_features : max_features + len(pad_lengths)] = pad_lengths
    return position_ids, np.concatenate([[0], np.cumsum(seg_lengths)]).astype(np.int32)

# --------------------------------------------------------------------------------------------
# Heads: the labels and masks a head takes, and its outputs back on the host
# --------------------------------------------------------------------------------------------


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

    def decode(self, examples, features, parts: list[dict], settings: decoding.DecodingSettings) -> decoding.Decoded:
        """Best spans, n-best lists and null odds from the outputs of every process."""
        parts = [p for p in parts if p]
        chunks = [{"source_index": p["token"]} for p in parts]
        n = int(features.feature_start[-1])
        start = unpack_logits([p["start_logits"] for p in parts], chunks, n)
        end = unpack_logits([p["end_logits"] for p in parts], chunks, n)
        return decoding.decode_span_logits(examples, features, start, end, settings)


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
        arrays = {name: getattr(out, name).detach() for name in decoding.BEAM_ARRAYS}
        shift = batch["left_pad"][:, None]
        arrays["start_top_index"] = arrays["start_top_index"] - shift
        arrays["end_top_index"] = arrays["end_top_index"] - shift
        arrays["feature"] = batch["feature_index"]
        return arrays

    def collect(self, outputs: list[dict]) -> dict[str, np.ndarray]:
        return _to_host(outputs)

    def decode(self, examples, features, parts: list[dict], settings: decoding.DecodingSettings) -> decoding.Decoded:
        """Best spans, n-best lists and answerability logits from the outputs of every process."""
        parts = [p for p in parts if p]
        order = np.concatenate([p["feature"] for p in parts])
        if sorted(order.tolist()) != list(range(len(features))):
            raise ValueError(f"beam outputs cover {len(set(order.tolist()))} of {len(features)} features")
        arrays = {name: np.concatenate([p[name] for p in parts])[np.argsort(order)] for name in decoding.BEAM_ARRAYS}
        return decoding.decode_beam(examples, features, arrays, settings)


def make_head(beam: bool) -> SpanHead | BeamHead:
    return BeamHead() if beam else SpanHead()

# --------------------------------------------------------------------------------------------
# Strategies: padded or packed, chosen once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanOutput:
    """What a packed forward returns: logits over the token stream, and the loss when training."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: torch.Tensor | None = None


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
    prepared_mask: bool = False  # a 4-D key-padding mask (takes_prepared_mask), else the 2-D attention mask
    packed = False

    def plan(self, lengths: np.ndarray, seed: int | None = None) -> list[np.ndarray]:
        """Feature indices per batch: shuffled by seed for training, deterministic (sorted) without."""
        if seed is None:
            return eval_batches(lengths, self.batch_size)
        return length_grouped_batches(lengths, self.batch_size, seed, mega_batch_mult=50 if self.grouped else 1)

    def tensors(self, features, idx: np.ndarray, with_labels: bool) -> dict:
        arrays = collate(features, idx, with_labels, pad_to_multiple_of=self.pad_to_multiple_of)
        batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
        batch["source_index"] = torch.from_numpy(padded_source_index(features, idx, batch["input_ids"].shape[1]))
        batch["feature_index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        if self.prepared_mask:  # decided here, on the host: None when nothing is padded (attention needs no mask)
            padded = bool((features.lengths()[idx] < batch["input_ids"].shape[1]).any())
            batch["prepared_mask"] = batch["attention_mask"].bool()[:, None, None, :] if padded else None
        return batch

    def inputs(self, batch: dict, training: bool) -> dict:
        """The tensors this model family takes (the classic script's per-type rules)."""
        mask = batch["prepared_mask"] if self.prepared_mask else batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if self.model_type not in NO_TOKEN_TYPES:
            inputs["token_type_ids"] = batch["token_type_ids"]
        if self.model_type == "xlm":
            inputs["langs"] = torch.full_like(batch["input_ids"], self.lang_id)
        return {**inputs, **self.head.inputs(batch, training, self.version_2)}

    def forward(self, model, batch: dict, training: bool):
        return model(**self.inputs(batch, training))


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
            return pack_features(lengths, self.tokens, max_features=self.slots)
        rng = np.random.default_rng(seed)
        packs = pack_features(lengths, self.tokens, max_features=self.slots,
                                      order=rng.permutation(len(lengths)))
        return [packs[i] for i in rng.permutation(len(packs))]  # first-fit fills later packs with leftovers

    def tensors(self, features, idx: np.ndarray, with_labels: bool) -> dict:
        return make_packed_batch(features, idx, self.tokens, self.slots, self.max_seqlen,
                                 with_labels=with_labels, position_offset=self.position_offset)

    def forward(self, model, batch: dict, training: bool) -> SpanOutput:
        start, end = packing.packed_forward(model, batch, self.model_type)
        return SpanOutput(start, end, packing.packed_qa_loss(start, end, batch) if training else None)


def make_batching(head, config, features, batch_size: int, *, packed: bool, pack_tokens: int, max_seq_length: int,
                  version_2: bool, lang_id: int, compiled: bool = False, grouped: bool = True,
                  attn_implementation: str | None = None):
    """Padded batches, or packs of a size fixed for the whole run from the features' lengths. attn_implementation:
    the model's attention function (None: SDPA, transformers' default for these families)."""
    if modeling_relative.is_relative_position_config(config):
        attn_implementation = "eager"  # the relative-position BERT computes its attention itself (qa_model)
    if not packed:
        return PaddedBatches(batch_size, head, config.model_type, version_2, lang_id, 64 if compiled else 8, grouped,
                             takes_prepared_mask(config.model_type, attn_implementation))
    lengths = features.lengths()
    tokens = pack_tokens or max(max_seq_length, int(math.ceil(batch_size * lengths.mean() / 64)) * 64)
    return PackedBatches(batch_size, head, config.model_type, tokens=tokens, slots=tokens // int(lengths.min()),
                         max_seqlen=int(lengths.max()), position_offset=packing.position_offset(config))

# --------------------------------------------------------------------------------------------
# To the device, built ahead
# --------------------------------------------------------------------------------------------


def to_device(batch: dict, device, non_blocking: bool = True) -> dict:
    """Tensors to the device (ints stay ints), by default without waiting for the copy (pinned host memory
    makes it asynchronous)."""
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


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

# --------------------------------------------------------------------------------------------
# Training: optimizer steps over epochs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainBatches:
    """Micro-batches per device and per optimizer step: the flags', a resumed checkpoint's, or what
    --auto_find_batch_size found (the same global batch either way), and the batching built for them."""

    batch_size: int
    accumulation: int
    batching: PaddedBatches | PackedBatches

    def describe(self, max_seq_length: int) -> str:
        if self.batching.packed:
            return f"packs of {self.batching.tokens} tokens (--per_gpu_train_batch_size {self.batch_size})"
        return f"--per_gpu_train_batch_size {self.batch_size} and --max_seq_length {max_seq_length}"


def epoch_plan(strategy, lengths: np.ndarray, seed: int, rank: int, world_size: int, accum: int) -> list[list]:
    """One epoch as optimizer steps, each a list of `accum` micro-batches of this rank: a deterministic
    function of the seed, so resuming at step k of an epoch is plan[k:]. Every rank gets the same number
    of steps; leftover micro-batches (fewer than `accum`) are dropped, not carried into the next epoch."""
    batches = strategy.plan(lengths, seed=seed)
    usable = len(batches) - len(batches) % world_size
    mine = batches[rank:usable:world_size]
    return [mine[i * accum:(i + 1) * accum] for i in range(len(mine) // accum)]


def optimizer_steps(plan_of_epoch: Callable[[int], list[list]], position: dict, total_steps: int) -> Iterator:
    """(position after the step, its micro-batches) for every optimizer step from `position` on."""
    step, epoch, start = position["global_step"], position["epoch"], position["step_in_epoch"]
    while step < total_steps:
        plan = plan_of_epoch(epoch)  # packs per epoch vary a little with the shuffle
        for i in range(start, len(plan)):
            step += 1
            done = i + 1 == len(plan)
            yield {"global_step": step, "epoch": epoch + done, "step_in_epoch": 0 if done else i + 1}, plan[i]
            if step >= total_steps:
                return
        epoch, start = epoch + 1, 0


# --------------------------------------------------------------------------------------------
# Back to the features' layout
# --------------------------------------------------------------------------------------------


def unpack_logits(packed_logits, batches, num_tokens: int) -> np.ndarray:
    """Scatter packed logits back to the features' flat layout (aligned with features.feature_start).

    `packed_logits` / `batches`: one array or tensor of shape [1, T] or [T] per packed batch, or a single
    one of each. Returns float32 [num_tokens]; raises ValueError if some token was never covered
    (a batch missing) or covered twice (a feature packed twice).
    """
    if isinstance(batches, dict):
        batches, packed_logits = [batches], [packed_logits]
    out = np.full(num_tokens, np.nan, dtype=np.float32)
    written = np.zeros(num_tokens, dtype=np.int32)
    for logits, batch in zip(packed_logits, batches, strict=True):
        values = _to_numpy(logits).reshape(-1).astype(np.float32)
        source = _to_numpy(batch["source_index"]).reshape(-1)
        real = source >= 0
        out[source[real]] = values[real]
        np.add.at(written, source[real], 1)
    if not np.all(written == 1):
        missing, twice = int(np.sum(written == 0)), int(np.sum(written > 1))
        raise ValueError(f"unpack_logits: {missing} tokens never unpacked, {twice} unpacked more than once")
    return out


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)
