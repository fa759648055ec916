"""Packed variable-length execution of encoder QA models: no compute spent on padding.

Why a module of its own: this is neither data reading (utils_squad.py owns examples, features and
padded batches) nor the command line or the training loop (run_squad.py). It is an execution
strategy for the model: several features share one flat token stream, attention is restricted to
each feature's own tokens, position ids restart per feature, and the QA loss is a cross-entropy over
each feature's own tokens. run_squad.py (--packing) and bench/train_throughput.py use it.

Families: BERT (incl. MiniLM), RoBERTa, XLM-RoBERTa, ELECTRA, ALBERT, DistilBERT, ModernBERT
(transformers' own classes), and the project's relative-position BERT (modeling_relative.py,
relative_key and relative_key_query).

How the attention is swapped: transformers 5 models of these families look up their attention
function by name in `AttentionInterface`, and pass any extra forward kwargs (here
`cu_seq_lens_q`/`cu_seq_lens_k`/`max_length_q`/`max_length_k`, the same names the flash-attention
integration uses) down to it. `enable_packed_attention` registers two functions ("packed_varlen" and
"packed_varlen_nodrop") and switches the model to one of them. The names are also registered in
`AttentionMaskInterface` with the sdpa mask builder, so a normal padded call (no cu_seq_lens, a 2D
attention mask) still gets a correct mask and falls back to plain SDPA. The relative-position BERT
computes its attention itself (a learned distance term no fused kernel takes): it reads the same
kwargs and the same names (see `packed_call`, `segment_positions`, `use_block_diagonal`).

Kernels: on CUDA with fp16/bf16 tensors, flash attention's variable-length kernel
(`torch.nn.attention.varlen.varlen_attn` when there is no dropout; `aten._flash_attention_forward`,
the same kernel with dropout and autograd, when attention dropout is on). Anywhere else an exact
SDPA: one per feature in eager CPU code, one with a block-diagonal mask over the whole stream on a
GPU (fp32) and under torch.compile (fixed shape; quadratic in the pack size). `varlen_attn`
hard-codes dropout to 0, hence the choice `attention_dropout` in `enable_packed_attention` (the CLI
exposes it as `--packed_attention_dropout`). The relative-position BERT never takes the varlen kernel
(it cannot add the distance term): per feature on a CPU, block-diagonal (quadratic) everywhere else.

Fixed shapes (for torch.compile and CUDA graphs): every pack has exactly `tokens_per_pack` tokens
and `max_features` feature slots. Unused tokens form dummy segments of at most `max_seqlen` tokens
each (so every token is computed by the kernel: nothing uninitialised can leak NaN into a weight
gradient), unused slots are zero-length segments. Nothing in `packed_qa_loss` syncs with the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch without the public wrapper: _varlen_attn calls the kernel itself
    varlen_attn = None

PACKED_ATTENTION = "packed_varlen"
PACKED_ATTENTION_NO_DROPOUT = "packed_varlen_nodrop"
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "modernbert")
# Model types whose position ids start after the padding index (fairseq convention).
_OFFSET_POSITION_MODEL_TYPES = ("roberta", "xlm-roberta")
# Model types without token type embeddings (their forward takes no token_type_ids).
_NO_TOKEN_TYPE_MODEL_TYPES = ("modernbert", "distilbert")

# Keys of a packed batch that are model inputs (the rest is bookkeeping for the loss and unpacking).
MODEL_INPUT_KEYS = ("input_ids", "token_type_ids", "position_ids")


# ----------------------------------------------------------------------------------------------
# Packing (numpy only)
# ----------------------------------------------------------------------------------------------
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


def pad_slots_needed(tokens_per_pack: int, max_seqlen: int) -> int:
    """Number of dummy segments that can cover any unused tail of a pack (each at most max_seqlen)."""
    return math.ceil(tokens_per_pack / max_seqlen)


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
    """Build one fixed-shape packed batch (CPU tensors) from CONTRACT SquadFeatures rows `indices`.

    Keys: input_ids, token_type_ids, position_ids [1, T]; cu_seqlens int32 [max_features + pad_slots + 1];
    max_seqlen (int); segment_ids [T] (feature slot per token, pad tokens -> max_features);
    feature_index [max_features] (row in `features`, -1 for an empty slot); feature_valid [max_features];
    token_start [max_features] (slot offset in the stream); start_positions / end_positions
    [max_features] in stream coordinates (with labels); source_index [T] (position in the features'
    flat arrays, -1 for pad); num_features, num_tokens (ints, known without a device sync).
    `position_offset` is padding_idx + 1 for RoBERTa-style position embeddings, else 0.
    """
    indices = np.asarray(indices, dtype=np.int64)
    starts = np.asarray(features.feature_start, dtype=np.int64)
    lengths = starts[indices + 1] - starts[indices]
    total = int(lengths.sum())
    _check_pack(len(indices), total, lengths, tokens_per_pack, max_features, max_seqlen)
    pad_id = features.pad_token_id if pad_token_id is None else pad_token_id
    offsets_in_pack = np.concatenate([[0], np.cumsum(lengths)])
    stream = _token_stream(features, starts, indices, lengths, tokens_per_pack, pad_id)
    position_ids, cu_seqlens = _segments(lengths, total, tokens_per_pack, max_features, max_seqlen)
    stream["position_ids"] = position_ids + position_offset

    segment_ids = np.full(tokens_per_pack, max_features, dtype=np.int64)
    segment_ids[:total] = np.repeat(np.arange(len(indices)), lengths)
    feature_index = np.full(max_features, -1, dtype=np.int64)
    feature_index[: len(indices)] = indices
    token_start = np.zeros(max_features, dtype=np.int64)
    token_start[: len(indices)] = offsets_in_pack[:-1]
    batch = {name: torch.from_numpy(stream[name]).unsqueeze(0) for name in MODEL_INPUT_KEYS}
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


def batch_to_device(batch: dict, device, non_blocking: bool = True) -> dict:
    """Move the tensors of a packed batch to `device` (ints stay ints)."""
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


def model_kwargs(batch: dict, model_type: str = "bert") -> dict:
    """The forward kwargs for a model switched by `enable_packed_attention` (no labels: see packed_qa_loss)."""
    kwargs = {k: batch[k] for k in MODEL_INPUT_KEYS if not (k == "token_type_ids" and model_type in
                                                             _NO_TOKEN_TYPE_MODEL_TYPES)}
    kwargs.update(
        cu_seq_lens_q=batch["cu_seqlens"],
        cu_seq_lens_k=batch["cu_seqlens"],
        max_length_q=batch["max_seqlen"],
        max_length_k=batch["max_seqlen"],
    )
    if model_type == "modernbert":
        # Its own masks per layer kind: none are needed (the packed kernels take cu_seqlens and the window),
        # and a stream-long sliding-window mask would otherwise be built on every forward.
        kwargs["attention_mask"] = {"full_attention": None, "sliding_attention": None}
    return kwargs


# ----------------------------------------------------------------------------------------------
# Loss and unpacking
# ----------------------------------------------------------------------------------------------
def _segment_log_softmax_at(logits, segment_ids, num_segments: int, targets):
    """-log softmax(logits restricted to target's segment)[target], per segment; shapes [S]."""
    x = logits.float()
    # A per-segment max keeps exp() in range; detached, it only shifts the log-sum-exp.
    seg_max = torch.zeros(num_segments, dtype=x.dtype, device=x.device)
    seg_max = seg_max.scatter_reduce(0, segment_ids, x.detach(), reduce="amax", include_self=False)
    sums = torch.zeros(num_segments, dtype=x.dtype, device=x.device).index_add(
        0, segment_ids, torch.exp(x - seg_max[segment_ids])
    )
    # Non-empty segments sum to >= 1 (their max contributes exp(0)); the clamp only keeps empty
    # slots finite (and their gradient zero) so masking them out cannot create NaN.
    lse = torch.log(sums.clamp_min(1e-30)) + seg_max
    return lse[: targets.shape[0]] - x[targets]


def packed_qa_loss(start_logits, end_logits, batch: dict):
    """Mean over the pack's features of (CE(start) + CE(end)) / 2, each CE over the feature's own tokens.

    Equals BertForQuestionAnswering's loss on each feature alone without padding. (On a padded batch
    the HF loss also puts probability mass on padding positions; this one does not.) No host sync.
    """
    segment_ids = batch["segment_ids"]
    valid = batch["feature_valid"]
    num_slots = valid.shape[0]
    start_logits = start_logits.reshape(-1)
    end_logits = end_logits.reshape(-1)
    ce_start = _segment_log_softmax_at(start_logits, segment_ids, num_slots + 1, batch["start_positions"])
    ce_end = _segment_log_softmax_at(end_logits, segment_ids, num_slots + 1, batch["end_positions"])
    per_feature = (ce_start + ce_end) / 2
    per_feature = torch.where(valid, per_feature, torch.zeros_like(per_feature))
    return per_feature.sum() / valid.sum().clamp_min(1)


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


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
def _flash_varlen_usable(query) -> bool:
    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 256
    )


def _segment_of(cu_seqlens, total: int, device):
    positions = torch.arange(total, device=device)
    return positions, torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True)


def segment_positions(cu_seqlens, total: int):
    """(segment, position inside its segment) of each of the stream's `total` tokens, both [total], on
    cu_seqlens' device without a host sync. Positions restart at 0 per segment (pad segments included),
    as the batch's position ids do before `position_offset`: what a distance-based attention needs."""
    stream, segment = _segment_of(cu_seqlens, total, cu_seqlens.device)
    return segment, stream - cu_seqlens.to(stream.dtype)[segment]


def packed_call(kwargs: dict) -> bool:
    """Whether an attention call is part of a packed forward (model_kwargs passes cu_seqlens down)."""
    return kwargs.get("cu_seq_lens_q") is not None


def packed_dropout_enabled(config) -> bool:
    """Whether packed attention applies attention dropout in training (False after
    enable_packed_attention(attention_dropout=False))."""
    return config._attn_implementation != PACKED_ATTENTION_NO_DROPOUT


def use_block_diagonal(query) -> bool:
    """The exact path when the varlen kernel cannot be used: one fixed-shape block-diagonal attention on a
    GPU (no host sync, CUDA-graph safe) and under torch.compile (one traced shape); one attention per
    feature in eager CPU code (cheaper: no work across features)."""
    return query.is_cuda or torch.compiler.is_compiling()


def _block_diagonal_sdpa(query, key, value, cu_seqlens, dropout: float, scaling, window: int | None):
    """Exact reference path: SDPA over the whole stream with a mask keeping each segment to itself (and,
    for a local-attention layer, to tokens at most `window` positions away). One fixed-shape call: what
    torch.compile sees; quadratic in the pack size."""
    positions, segment = _segment_of(cu_seqlens, query.shape[2], query.device)
    mask = segment[:, None] == segment[None, :]
    if window is not None:
        mask &= (positions[:, None] - positions[None, :]).abs() <= window
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask[None, None], dropout_p=dropout, scale=scaling
    )
    return out.transpose(1, 2)


def _per_segment_sdpa(query, key, value, cu_seqlens, dropout: float, scaling, window: int | None):
    """Exact eager path off the GPU: one SDPA per feature (no work across features), so a CPU pack costs
    what its features cost padded, not the square of the pack."""
    bounds = cu_seqlens.tolist()  # on the CPU: no device to wait for
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b == a:
            continue
        mask = None
        if window is not None:
            pos = torch.arange(b - a, device=query.device)
            mask = ((pos[:, None] - pos[None, :]).abs() <= window)[None, None]
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], attn_mask=mask, dropout_p=dropout, scale=scaling))
    return torch.cat(outs, dim=2).transpose(1, 2)


def _flash_varlen(query, key, value, cu_seqlens, max_seqlen: int, dropout: float, scaling, window: int | None):
    """Flash attention's varlen kernel on [T, H, D] views of the [1, H, T, D] inputs."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    cu = cu_seqlens.to(torch.int32)
    if dropout > 0.0 or window is not None:
        # Same kernel varlen_attn wraps, with dropout and the local window (varlen_attn has no dropout,
        # and may pick cuDNN, which has no window); aten's autograd formula gives the backward.
        w = -1 if window is None else window
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_seqlen, max_seqlen, dropout, False, False, scale=scaling,
            window_size_left=w, window_size_right=w,
        )[0]
    else:
        out = _varlen_attn()(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scaling)
    return out.unsqueeze(0)


def _varlen_attn():
    if varlen_attn is not None:
        return varlen_attn

    def fallback(q, k, v, cu_q, cu_k, max_q, max_k, scale=None):  # the kernel varlen_attn wraps
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False,
                                                        scale=scale)[0]

    return fallback


def _local_window(kwargs: dict) -> int | None:
    """Tokens each side a local-attention layer sees (ModernBERT passes sliding_window = half window + 1,
    flash attention's inclusive convention), None for global attention."""
    sliding = kwargs.get("sliding_window")
    return None if sliding is None else int(sliding) - 1


def _make_attention(apply_dropout: bool):
    def packed_attention_forward(
        module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
    ):
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if not packed_call(kwargs):
            # A normal padded call (evaluation with the usual collate): plain SDPA with its mask.
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if query.shape[0] != 1:
            raise ValueError(f"packed attention expects one flat stream (batch 1), got batch {query.shape[0]}")
        dropout = dropout if apply_dropout else 0.0
        window = _local_window(kwargs)
        if _flash_varlen_usable(query):
            out = _flash_varlen(query, key, value, cu_seqlens, int(kwargs["max_length_q"]), dropout, scaling, window)
        elif use_block_diagonal(query):
            out = _block_diagonal_sdpa(query, key, value, cu_seqlens, dropout, scaling, window)
        else:
            out = _per_segment_sdpa(query, key, value, cu_seqlens, dropout, scaling, window)
        return out, None

    return packed_attention_forward


def register_packed_attention() -> None:
    """Register both packed attention functions (idempotent)."""
    for name, apply_dropout in ((PACKED_ATTENTION, True), (PACKED_ATTENTION_NO_DROPOUT, False)):
        AttentionInterface.register(name, _make_attention(apply_dropout))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)


def supports_packing(model) -> bool:
    """True for transformers' own encoders of SUPPORTED_MODEL_TYPES that dispatch through AttentionInterface,
    and for models whose class declares `supports_packed_attention` (the project's relative-position BERT:
    its attention reads the packed kwargs itself)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(type(model), "supports_packed_attention", False):
        return True
    if not type(model).__module__.startswith("transformers.models."):
        return False  # another project model: nothing says its attention reads cu_seqlens
    if _relative_positions(config):
        return False  # transformers 5 BERT with a relative config: absolute positions, distance tables dropped
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    return bool(can_set()) if callable(can_set) else True


def _relative_positions(config) -> bool:
    return (getattr(config, "position_embedding_type", None) or "absolute") != "absolute"


def position_offset(model_or_config) -> int:
    """First position id of a feature: padding_idx + 1 for RoBERTa-style embeddings, else 0."""
    config = getattr(model_or_config, "config", model_or_config)
    if config.model_type in _OFFSET_POSITION_MODEL_TYPES:
        return int(config.pad_token_id) + 1
    return 0


def enable_packed_attention(model, attention_dropout: bool = True) -> str:
    """Switch `model` to packed attention; returns the attention implementation it had before.

    attention_dropout=False uses `varlen_attn` without dropout during training (a different
    regulariser than the published recipes; faster to compile, deterministic). Inference never
    uses dropout either way. Call `disable_packed_attention(model, previous)` before padded use
    if you want the original implementation back (padded calls also work while enabled).
    """
    if not supports_packing(model):
        raise ValueError(f"packing is not supported for {type(model).__name__} ({model.config.model_type})")
    register_packed_attention()
    previous = model.config._attn_implementation
    _set_attention(model, PACKED_ATTENTION if attention_dropout else PACKED_ATTENTION_NO_DROPOUT)
    return previous


def disable_packed_attention(model, previous: str = "sdpa") -> None:
    _set_attention(model, previous)


def _set_attention(model, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError, KeyError):
        # Older 5.x releases validate names differently: set the config fields directly.
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                config._attn_implementation_internal = name
    if model.config._attn_implementation != name:
        raise RuntimeError(f"could not switch {type(model).__name__} to attention {name!r}")


def packed_forward(model, batch: dict, model_type: str = "bert"):
    """Run the QA model on a packed batch (already on the device); returns (start_logits, end_logits) [1, T]."""
    outputs = model(**model_kwargs(batch, model_type))
    return outputs.start_logits, outputs.end_logits


def lengths_of(features) -> np.ndarray:
    starts = np.asarray(features.feature_start, dtype=np.int64)
    return starts[1:] - starts[:-1]


def plan_packs(lengths: np.ndarray, tokens_per_pack: int, max_seqlen: int, order=None) -> tuple[list, int]:
    """pack_features plus the fixed slot count to give make_packed_batch for all of them."""
    packs = pack_features(lengths, tokens_per_pack, order=order)
    max_features = max((len(p) for p in packs), default=1)
    return packs, max_features


__all__: Sequence[str] = (
    "PACKED_ATTENTION",
    "PACKED_ATTENTION_NO_DROPOUT",
    "batch_to_device",
    "disable_packed_attention",
    "enable_packed_attention",
    "lengths_of",
    "make_packed_batch",
    "model_kwargs",
    "pack_features",
    "packed_call",
    "packed_dropout_enabled",
    "packed_forward",
    "packed_qa_loss",
    "plan_packs",
    "position_offset",
    "register_packed_attention",
    "segment_positions",
    "supports_packing",
    "unpack_logits",
    "use_block_diagonal",
)
