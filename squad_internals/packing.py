"""Packed attention and the packed loss: the model side of packed batches, no compute spent on padding.

Why a module of its own: a packed batch (batching.py builds it) is one flat token stream [1, T] holding
several whole features; the model can only run on it if attention stays inside each feature and the loss is
each feature's own. That is a change to how the model computes, not to the data, so it lives apart from the
batches: this module swaps the attention of a loaded model and computes the loss; batching.PackedBatches uses it.

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

Fixed shapes (for torch.compile and CUDA graphs): every pack has exactly `tokens_per_pack` tokens and
`max_features` feature slots (batching.make_packed_batch). Unused tokens form dummy segments, so every token
is computed by the kernel and nothing uninitialised can leak NaN into a weight gradient; unused slots are
zero-length segments. Nothing in `packed_qa_loss` syncs with the host.
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from squad_internals import model_families

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch without the public wrapper: _varlen_attn calls the kernel itself
    varlen_attn = None

PACKED_ATTENTION = "packed_varlen"
PACKED_ATTENTION_NO_DROPOUT = "packed_varlen_nodrop"
SUPPORTED_MODEL_TYPES = model_families.PACKING_TYPES

# Keys of a packed batch that are model inputs (the rest is bookkeeping for the loss and unpacking).
MODEL_INPUT_KEYS = ("input_ids", "token_type_ids", "position_ids")


def model_kwargs(batch: dict, model_type: str = "bert") -> dict:
    """The forward kwargs for a model switched by `enable_packed_attention` (no labels: see packed_qa_loss)."""
    how = model_families.packing_of(model_type)
    kwargs = {k: batch[k] for k in MODEL_INPUT_KEYS if k != "token_type_ids" or how.token_type_ids}
    kwargs.update(
        cu_seq_lens_q=batch["cu_seqlens"],
        cu_seq_lens_k=batch["cu_seqlens"],
        max_length_q=batch["max_seqlen"],
        max_length_k=batch["max_seqlen"],
    )
    if how.masks_per_layer_kind:
        # ModernBERT's masks per layer kind: none are needed (the packed kernels take cu_seqlens and the
        # window), and a stream-long sliding-window mask would otherwise be built on every forward.
        kwargs["attention_mask"] = {"full_attention": None, "sliding_attention": None}
    else:
        # A prepared 4-D mask is passed through as it is. Without one, transformers would read the position ids
        # on the host to detect the packing (a GPU sync every forward) and build a [T, T] mask over the stream;
        # the packed attention attends by cu_seqlens and never reads this one.
        kwargs["attention_mask"] = batch["prepared_mask"]
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


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
def _flash_varlen_usable(query) -> bool:
    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 256
        and flash_capable(query.device.index)
    )


@functools.cache
def flash_capable(device_index: int | None) -> bool:
    """Flash attention's kernels run on compute capability 8.0 and newer (asked once per device)."""
    return torch.cuda.get_device_capability(device_index)[0] >= 8


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
    if model_families.packing_of(config.model_type).positions_after_padding:
        return int(config.pad_token_id) + 1
    return 0


def enable_packed_attention(model, attention_dropout: bool = True) -> str:
    """Switch `model` to packed attention; returns the attention implementation it had before.

    attention_dropout=False uses `varlen_attn` without dropout during training (a different
    regulariser than the published recipes; faster to compile, deterministic). Inference never
    uses dropout either way. Padded calls still work while enabled (plain SDPA with their mask).
    """
    if not supports_packing(model):
        raise ValueError(f"packing is not supported for {type(model).__name__} ({model.config.model_type})")
    register_packed_attention()
    previous = model.config._attn_implementation
    _set_attention(model, PACKED_ATTENTION if attention_dropout else PACKED_ATTENTION_NO_DROPOUT)
    return previous


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
