"""BERT with relative position embeddings (`relative_key`, `relative_key_query`) for question answering.

Why a module of its own: it is model architecture that transformers 5 dropped. transformers 4.x computed
`position_embedding_type` "relative_key" (Shaw et al. 2018) and "relative_key_query" (Huang et al. 2020,
method 4) inside BertSelfAttention. transformers 5 reads such a config.json as plain BERT: it drops every
`...attention.self.distance_embedding.weight` and adds absolute positions the checkpoint never saw, so
`zhiheng-huang/bert-base-uncased-embedding-relative-key-query` fine-tunes to a worse model with no error.
Here the 4.x computation is restored on top of the transformers 5 classes:

    scores = (Q K^T + rel) / sqrt(head_size) + mask,   rel[b,h,l,r] = q_l . E[l-r+M-1]   (relative_key)
                                                                     + k_r . E[l-r+M-1]   (relative_key_query)

with M = max_position_embeddings and E the per-layer `distance_embedding` ([2M-1, head_size]); the
embeddings add no absolute positions (their weights are kept, frozen, so checkpoints round-trip with 4.x).
`load_question_answering_model` picks this model for relative configs and the plain
AutoModelForQuestionAnswering otherwise, and refuses to drop or invent encoder weights.

Packed execution (packing.py, --packing): several features share one stream whose positions restart per
feature; the attention then takes its distances inside each feature and attends within it only
(`RelativeBertSelfAttention.packed_attention`).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForQuestionAnswering, BertForQuestionAnswering, BertModel
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertPooler,
    BertPreTrainedModel,
    BertSelfAttention,
)

from squad_internals import model_families, packing

logger = logging.getLogger(__name__)

RELATIVE_POSITION_TYPES = ("relative_key", "relative_key_query")
SUPPORTED_MODEL_TYPES = model_families.RELATIVE_POSITION_MODEL_TYPES
# Checkpoint keys outside the encoder body that may legitimately differ from a QA model: a pretraining
# checkpoint brings MLM/NSP heads and a pooler (QA has none) and lacks the new qa_outputs head.
HEAD_PREFIXES = ("qa_outputs.", "cls.", "bert.pooler.", "pooler.")
# from_pretrained keyword arguments that AutoConfig.from_pretrained understands too.
CONFIG_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "trust_remote_code", "force_download")


class RelativePositionError(ValueError):
    """A relative-position model that cannot be built or loaded faithfully (one-line message)."""


def position_embedding_type(config) -> str:
    """The config's position_embedding_type; "absolute" when absent.

    transformers 5's BertConfig no longer declares the field, but PreTrainedConfig keeps unknown
    config.json keys as plain attributes (and writes them back on save), so getattr finds it.
    """
    return getattr(config, "position_embedding_type", None) or "absolute"


def is_relative_position_config(config) -> bool:
    """True for a config whose position_embedding_type is relative_key or relative_key_query."""
    return position_embedding_type(config) in RELATIVE_POSITION_TYPES


def check_relative_config(config) -> None:
    """Refuse configs this module cannot reproduce exactly (one-line RelativePositionError)."""
    kind = position_embedding_type(config)
    if kind not in RELATIVE_POSITION_TYPES:
        raise RelativePositionError(f"position_embedding_type {kind!r} is not one of {RELATIVE_POSITION_TYPES}")
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise RelativePositionError(
            f"model_type {config.model_type!r} with position_embedding_type {kind!r} is not supported "
            f"(only {', '.join(SUPPORTED_MODEL_TYPES)}); transformers 5 would drop its distance_embedding weights"
        )
    if getattr(config, "is_decoder", False):
        raise RelativePositionError("relative position embeddings are implemented for encoders only (is_decoder=True)")


def additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The 4D mask as a float bias (0 keep, dtype min drop), whatever form transformers 5 built it in."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    return torch.zeros((), dtype=dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, torch.finfo(dtype).min
    )


class RelativeBertEmbeddings(BertEmbeddings):
    """Word + token type embeddings only: 4.x added absolute positions only for "absolute".

    position_embeddings stays a (frozen) parameter so 4.x checkpoints load and save key for key; frozen
    because it never receives a gradient, which DistributedDataParallel would otherwise report as unused.
    """

    def __init__(self, config):
        super().__init__(config)
        self.position_embeddings.weight.requires_grad_(False)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                **cache_offsets) -> torch.Tensor:
        # cache_offsets: the past length under whatever name this transformers 5.x release passes it
        # (past_key_values_length, cache_length); it only shifts absolute positions, which we never add.
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:-1], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class RelativeBertSelfAttention(BertSelfAttention):
    """transformers 4.x BertSelfAttention for relative_key / relative_key_query, in eager math."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__(config, is_causal=False, layer_idx=layer_idx)
        self.position_embedding_type = position_embedding_type(config)
        self.max_position_embeddings = config.max_position_embeddings
        self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)

    def relative_scores(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query-side (and for relative_key_query key-side) relative terms, [batch, heads, L, R] each."""
        query_length, key_length = query.shape[2], key.shape[2]
        self.check_length(max(query_length, key_length))
        positions_l = torch.arange(query_length, dtype=torch.long, device=query.device).view(-1, 1)
        positions_r = torch.arange(key_length, dtype=torch.long, device=query.device).view(1, -1)
        # One gather per layer per forward: [L, R, head_size], shared by every batch row and head.
        embedding = self.distance_embedding(positions_l - positions_r + self.max_position_embeddings - 1)
        embedding = embedding.to(dtype=query.dtype)  # half precision under autocast, as 4.x did
        query_scores = torch.einsum("bhld,lrd->bhlr", query, embedding)
        if self.position_embedding_type == "relative_key":
            return query_scores, None
        return query_scores, torch.einsum("bhrd,lrd->bhlr", key, embedding)

    def packed_relative_scores(self, query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                               max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """relative_scores over a packed stream [1, heads, T, D]: distances from `positions` (restarting per
        feature), so each feature gets the terms it gets alone. Pairs across features get some in-range
        distance too; the caller masks them out.

        A [T, T, head_size] gather of the table (what relative_scores does per feature) would be far too
        large for a stream, so each token is multiplied with the 2*max_seqlen-1 rows it can need (a
        [1, heads, T, 2*max_seqlen-1] product) and the [T, T] terms are gathered from that.
        """
        self.check_length(max_seqlen)
        span = max_seqlen - 1  # the largest distance inside a feature
        table = self.distance_embedding.weight[self.max_position_embeddings - 1 - span:
                                               self.max_position_embeddings + span].to(dtype=query.dtype)
        # Row span + d of `table` holds distance d (l - r); pairs across features are clamped into range.
        index = (positions[:, None] - positions[None, :]).clamp(-span, span) + span
        heads = (*query.shape[:2], *index.shape)
        query_scores = torch.matmul(query, table.t()).gather(-1, index.expand(heads))
        if self.position_embedding_type == "relative_key":
            return query_scores, None
        # k_r . E[l - r]: per key row r, the distance to every query l ([r, l] = index.T), then back to [l, r].
        key_scores = torch.matmul(key, table.t()).gather(-1, index.t().expand(heads)).transpose(-1, -2)
        return query_scores, key_scores

    def check_length(self, length: int) -> None:
        if length > self.max_position_embeddings:
            raise RelativePositionError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{self.max_position_embeddings} of this relative-position model"
            )

    def attend(self, query, key, value, relative: tuple[torch.Tensor, torch.Tensor | None], mask, dropout: bool):
        """4.x's attention given the relative terms and a mask (boolean keep or additive, or None):
        [batch, L, heads, D] and the probabilities."""
        # Same order of operations as 4.x: relative terms join the raw Q K^T, then the sum is scaled.
        scores = torch.matmul(query, key.transpose(-1, -2))
        query_scores, key_scores = relative
        scores = scores + query_scores
        if key_scores is not None:
            scores = scores + key_scores
        scores = scores / math.sqrt(self.attention_head_size)
        mask = additive_mask(mask, scores.dtype)
        if mask is not None:
            scores = scores + mask
        probs = nn.functional.softmax(scores, dim=-1)
        if dropout:
            probs = self.dropout(probs)  # drops whole tokens to attend to, as 4.x (and the original Transformer)
        return torch.matmul(probs, value).transpose(1, 2), probs

    def packed_attention(self, query, key, value, kwargs: dict) -> torch.Tensor:
        """Attention of a packed stream (batch 1, see packing.py): each feature attends to itself only, with
        distances inside the feature. [1, T, heads, D].

        Eager on a CPU: one attention per feature, the padded model's computation on each (cost of the
        features unpadded). On a GPU, or under torch.compile: one fixed-shape block-diagonal attention over the
        stream (no host sync, one traced shape), correct but quadratic in the pack: [heads, T, T] scores,
        probabilities and relative terms per layer (saved for backward), instead of sum(L_i^2) per feature;
        for 32 SQuAD features of ~170 tokens about 6x the attention memory and FLOPs of padded batches of 384.
        Flash attention's varlen kernel cannot take the per-pair relative term, so it is not used here.
        """
        cu_seqlens, max_seqlen = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
        dropout = packing.packed_dropout_enabled(self.config)
        if query.shape[0] != 1:
            raise ValueError(f"packed attention expects one flat stream (batch 1), got batch {query.shape[0]}")
        if packing.use_block_diagonal(query):
            segment, positions = packing.segment_positions(cu_seqlens, query.shape[2])
            keep = (segment[:, None] == segment[None, :])[None, None]
            relative = self.packed_relative_scores(query, key, positions, max_seqlen)
            return self.attend(query, key, value, relative, keep, dropout)[0]
        bounds = cu_seqlens.tolist()  # on the CPU: no device to wait for
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b > a:
                q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
                outs.append(self.attend(q, k, v, self.relative_scores(q, k), None, dropout)[0])
        return torch.cat(outs, dim=1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, cache=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        # transformers 5.x renamed past_key_values to cache; an encoder gets neither.
        if past_key_values is not None or cache is not None:
            raise RelativePositionError("relative position attention does not support a key/value cache")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        query = self.query(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.value(hidden_states).view(hidden_shape).transpose(1, 2)

        if packing.packed_call(kwargs):
            # A packed stream (packing.enable_packed_attention, packing.model_kwargs): no [T, T] probs returned.
            context, probs = self.packed_attention(query, key, value, kwargs), None
        else:
            context, probs = self.attend(query, key, value, self.relative_scores(query, key), attention_mask,
                                         dropout=True)
        return context.reshape(*input_shape, -1).contiguous(), probs


class RelativeBertModel(BertModel):
    """BertModel whose embeddings and self-attention follow the config's relative position type."""

    def __init__(self, config, add_pooling_layer: bool = True):
        check_relative_config(config)
        # BertModel.__init__ would build absolute modules and finalise them; build ours, then finalise once.
        BertPreTrainedModel.__init__(self, config)
        self.config = config
        self.gradient_checkpointing = False
        self.embeddings = RelativeBertEmbeddings(config)
        self.encoder = BertEncoder(config)
        for index, layer in enumerate(self.encoder.layer):
            layer.attention.self = RelativeBertSelfAttention(config, layer_idx=index)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()


class RelativeBertForQuestionAnswering(BertForQuestionAnswering):
    """BertForQuestionAnswering with 4.x relative position embeddings; loads 4.x checkpoints key for key.

    Eager attention only: the relative terms are a per-head [L, R] bias, which fused kernels do not take
    in the 4.x order of operations.  forward() and the loss are BertForQuestionAnswering's.  Packed streams
    (packing.enable_packed_attention) work too: the attention reads the packed kwargs itself
    (RelativeBertSelfAttention.packed_attention), hence `supports_packed_attention`.
    """

    supports_packed_attention = True
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def __init__(self, config):
        check_relative_config(config)
        BertPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.bert = RelativeBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()
        self.bert.embeddings.position_embeddings.weight.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Loading may replace parameters (and their requires_grad flags); the unused table stays frozen.
        loaded = model[0] if isinstance(model, tuple) else model
        loaded.bert.embeddings.position_embeddings.weight.requires_grad_(False)
        return model


def eager_config(config):
    """A copy of config set to eager attention, the only kind the relative model implements."""
    config = config.__class__.from_dict(config.to_dict())
    config._attn_implementation = "eager"
    return config


def question_answering_model_from_config(config, **kwargs):
    """A freshly initialised QA model: relative for relative configs, AutoModelForQuestionAnswering otherwise."""
    if is_relative_position_config(config):
        return RelativeBertForQuestionAnswering(eager_config(config))
    return AutoModelForQuestionAnswering.from_config(config, **kwargs)


def body_keys(keys) -> list[str]:
    """The keys of the encoder body (everything but task heads and the pooler), sorted."""
    return sorted(k for k in keys if not k.startswith(HEAD_PREFIXES))


def check_loading_info(model_name_or_path, info: dict) -> None:
    """Raise when loading dropped or left uninitialised any encoder weight. Head differences are only reported,
    by the load's own report (one line under qa_model.load_model: describe_load)."""
    problems = []
    if missing := body_keys(info.get("missing_keys", ())):
        problems.append(f"{len(missing)} weights missing from the checkpoint (left random), e.g. {missing[0]}")
    if unexpected := body_keys(info.get("unexpected_keys", ())):
        problems.append(f"{len(unexpected)} checkpoint weights would be dropped, e.g. {unexpected[0]}")
    if mismatched := sorted(info.get("mismatched_keys", ())):
        name, checkpoint_shape, model_shape = mismatched[0]
        problems.append(f"{len(mismatched)} weights have other shapes, e.g. {name} "
                        f"{tuple(checkpoint_shape)} vs {tuple(model_shape)}")
    if errors := info.get("error_msgs"):
        problems.append(" ".join(str(errors[0]).split()))
    if problems:
        raise RelativePositionError(f"{model_name_or_path}: relative-position model: {'; '.join(problems)}")


def load_question_answering_model(model_name_or_path, config=None, **from_pretrained_kwargs):
    """The QA model of a checkpoint: our relative BERT for relative configs, else AutoModelForQuestionAnswering.

    Absolute-position models go through AutoModelForQuestionAnswering.from_pretrained untouched.  For
    relative ones any attn_implementation asked for is replaced by "eager" (logged), and a checkpoint whose
    encoder weights would be dropped or left uninitialised raises RelativePositionError (one line).
    """
    if config is None:
        config_kwargs = {k: v for k, v in from_pretrained_kwargs.items() if k in CONFIG_KWARGS}
        config = AutoConfig.from_pretrained(model_name_or_path, **config_kwargs)
    if not is_relative_position_config(config):
        return AutoModelForQuestionAnswering.from_pretrained(model_name_or_path, config=config,
                                                             **from_pretrained_kwargs)
    check_relative_config(config)
    kwargs = dict(from_pretrained_kwargs)
    requested = kwargs.pop("attn_implementation", None)
    if requested not in (None, "eager"):
        logger.info("%s: %s uses eager attention (asked for %s)", model_name_or_path,
                    position_embedding_type(config), requested)
    kwargs.pop("output_loading_info", None)
    kwargs.pop("trust_remote_code", None)  # our class is local code; nothing remote to trust
    model, info = RelativeBertForQuestionAnswering.from_pretrained(
        model_name_or_path, config=eager_config(config), attn_implementation="eager",
        output_loading_info=True, **kwargs
    )
    check_loading_info(model_name_or_path, info)
    logger.info("%s: loaded BERT with %s position embeddings (%d distance_embedding tables)", model_name_or_path,
                position_embedding_type(config), len(model.bert.encoder.layer))
    return model
