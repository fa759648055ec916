"""Packed execution equals padded execution: logits, loss, gradients; packing and unpacking bookkeeping.

CPU, float32, tiny random models (hidden 32, 2 layers) of every packable family: BERT, RoBERTa, ELECTRA,
ALBERT, DistilBERT, ModernBERT and the project's relative-position BERT (relative_key, relative_key_query).
The packed path on CPU is one exact attention per feature; the fixed-shape block-diagonal path (what
torch.compile and a GPU without the varlen kernel run) is forced or compiled below; the CUDA varlen kernel
is checked by bench/gpu_suite.sh (bf16 tolerance).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForQuestionAnswering,
    BertConfig,
    BertForQuestionAnswering,
    DebertaConfig,
    DebertaV2Config,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    ElectraConfig,
    ElectraForQuestionAnswering,
    ModernBertConfig,
    ModernBertForQuestionAnswering,
    RobertaConfig,
    RobertaForQuestionAnswering,
    XLMConfig,
    XLNetConfig,
    XLNetForQuestionAnsweringSimple,
)

from squad_internals import batching, modeling_relative, packing, qa_model

VOCAB = 100
MAX_POS = 80


@dataclass
class HandFeatures:
    """The CONTRACT SquadFeatures fields packing reads, as ragged (CSR) numpy arrays."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    feature_start: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.feature_start) - 1


def make_features(lengths, seed=0, pad_token_id=0) -> HandFeatures:
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    # Ids avoid the pad id so RoBERTa's padded reference derives the same positions.
    ids = rng.integers(5, VOCAB, size=int(starts[-1])).astype(np.int32)
    types = np.concatenate([(np.arange(n) >= n // 3).astype(np.int8) for n in lengths])
    start = np.array([rng.integers(0, n) for n in lengths], dtype=np.int32)
    end = np.array([rng.integers(s, n) for s, n in zip(start, lengths, strict=True)], dtype=np.int32)
    return HandFeatures(ids, types, starts, start, end, pad_token_id)


def tiny_model(kind: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=MAX_POS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    if kind == "bert":
        model = BertForQuestionAnswering(BertConfig(**common))
    elif kind == "roberta":
        model = RobertaForQuestionAnswering(RobertaConfig(**common, pad_token_id=1, type_vocab_size=2))
    elif kind == "electra":
        model = ElectraForQuestionAnswering(ElectraConfig(**common, embedding_size=16))
    elif kind == "albert":
        # Two layers sharing one group of weights (ALBERT's cross-layer sharing), factorised embeddings.
        model = AlbertForQuestionAnswering(AlbertConfig(**common, embedding_size=16, classifier_dropout_prob=0.0))
    elif kind == "distilbert":
        model = DistilBertForQuestionAnswering(DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=MAX_POS,
            dropout=0.0, attention_dropout=0.0, qa_dropout=0.0))
    elif kind in RELATIVE_KINDS:
        model = modeling_relative.question_answering_model_from_config(BertConfig(**common,
                                                                                   position_embedding_type=kind))
        with torch.no_grad():  # 4.x's init (std 0.02) makes the distance terms too small to test
            for layer in model.bert.encoder.layer:
                layer.attention.self.distance_embedding.weight.normal_(0.0, 0.5)
    elif kind == "modernbert":
        # Layer 0 global, layers 1-2 local with 4 tokens each side: most features are longer than that.
        model = ModernBertForQuestionAnswering(ModernBertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
            max_position_embeddings=MAX_POS, local_attention=8, global_attn_every_n_layers=3, pad_token_id=0,
            attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0))
    else:
        raise AssertionError(kind)
    return model.float().eval()


def feature_row(features, i):
    a, b = features.feature_start[i], features.feature_start[i + 1]
    ids = torch.from_numpy(features.input_ids[a:b].astype(np.int64))[None]
    types = torch.from_numpy(features.token_type_ids[a:b].astype(np.int64))[None]
    return ids, types


def type_kwargs(model, types) -> dict:
    return {} if model.config.model_type in ("modernbert", "distilbert") else {"token_type_ids": types}


def packed_model(model):
    twin = copy.deepcopy(model)
    packing.enable_packed_attention(twin)
    return twin


def packed_batches(features, model, tokens_per_pack=64, max_seqlen=40):
    lengths = np.diff(features.feature_start)
    packs, max_features = batching.plan_packs(lengths, tokens_per_pack)
    offset = packing.position_offset(model)
    return [
        batching.make_packed_batch(features, p, tokens_per_pack, max_features, max_seqlen, position_offset=offset)
        for p in packs
    ]


LENGTHS = [17, 40, 5, 23, 31, 9, 12, 40, 1, 28]
RELATIVE_KINDS = ("relative_key", "relative_key_query")
# The families added after BERT, RoBERTa, ELECTRA and ModernBERT: also checked on the block-diagonal path.
NEW_KINDS = ("albert", "distilbert", *RELATIVE_KINDS)


# ------------------------------------------------------------------------------------------
# Packing bookkeeping
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_order", [False, True])
def test_pack_features_covers_every_feature_once_within_budget(use_order):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 385, size=2000)
    order = rng.permutation(len(lengths)) if use_order else None
    packs = batching.pack_features(lengths, 4096, max_features=24, order=order)
    flat = np.concatenate(packs)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert max(int(lengths[p].sum()) for p in packs) <= 4096
    assert max(len(p) for p in packs) <= 24
    # Near-optimal: within 2 % (+1) of the volume bound. (A slot cap hurts decreasing order more, since
    # the short features all come last, so that case is only held to 20 %.)
    lower_bound = int(np.ceil(lengths.sum() / 4096))
    assert len(packs) <= lower_bound * (1.02 if use_order else 1.2) + 1
    uncapped = batching.pack_features(lengths, 4096)
    assert len(uncapped) <= lower_bound * 1.02 + 1


def test_pack_features_is_deterministic_first_fit_decreasing():
    packs = batching.pack_features([5, 9, 3, 7, 4], 12)
    # FFD: 9 -> bin0, 7 -> bin1, 5 -> bin1 (12), 4 -> bin2, 3 -> bin0 (12).
    assert [p.tolist() for p in packs] == [[1, 2], [0, 3], [4]]
    assert [p.tolist() for p in batching.pack_features([5, 9, 3, 7, 4], 12)] == [[1, 2], [0, 3], [4]]


def test_pack_features_rejects_feature_longer_than_budget():
    with pytest.raises(ValueError, match="exceeds tokens_per_pack"):
        batching.pack_features([10, 50], 40)


def test_make_packed_batch_layout():
    features = make_features([3, 5, 2])
    batch = batching.make_packed_batch(features, np.array([0, 2]), 16, max_features=3, max_seqlen=6)
    assert batch["input_ids"].shape == (1, 16)
    # Features 0 (3 tokens) and 2 (2 tokens); 11 pad tokens in segments of <= 6; 1 empty slot; 3 pad slots.
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 5, 11, 16, 16]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
    assert batch["source_index"].tolist() == [0, 1, 2, 8, 9] + [-1] * 11
    assert batch["input_ids"][0, :5].tolist() == features.input_ids[[0, 1, 2, 8, 9]].tolist()
    assert batch["segment_ids"].tolist() == [0, 0, 0, 1, 1] + [3] * 11
    assert batch["feature_index"].tolist() == [0, 2, -1]
    assert batch["start_positions"].tolist()[:2] == [features.start_positions[0], 3 + features.start_positions[2]]
    assert (batch["num_features"], batch["num_tokens"]) == (2, 5)


def test_unpack_logits_round_trip_and_coverage_check():
    features = make_features(LENGTHS)
    model = tiny_model("bert")
    batches = packed_batches(features, model)
    # Use the input ids as "logits": unpacking must give back the flat features array.
    restored = batching.unpack_logits([b["input_ids"].float() for b in batches], batches, len(features.input_ids))
    np.testing.assert_array_equal(restored, features.input_ids.astype(np.float32))
    with pytest.raises(ValueError, match="never unpacked"):
        batching.unpack_logits([batches[0]["input_ids"]], batches[:1], len(features.input_ids))


# ------------------------------------------------------------------------------------------
# Packed execution equals padded execution
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "roberta", "electra", "modernbert", *NEW_KINDS])
def test_packed_logits_equal_per_feature_and_padded_logits(kind):
    features = make_features(LENGTHS)
    model = tiny_model(kind)
    packed = packed_model(model)
    batches = packed_batches(features, model)
    starts, ends = [], []
    with torch.no_grad():
        for b in batches:
            s, e = packing.packed_forward(packed, b, model.config.model_type)
            starts.append(s)
            ends.append(e)
        flat_start = batching.unpack_logits(starts, batches, len(features.input_ids))
        flat_end = batching.unpack_logits(ends, batches, len(features.input_ids))

        # Reference 1: each feature alone, no padding.
        for i in range(len(features)):
            ids, types = feature_row(features, i)
            out = model(input_ids=ids, **type_kwargs(model, types), attention_mask=torch.ones_like(ids))
            a, b = features.feature_start[i], features.feature_start[i + 1]
            np.testing.assert_allclose(flat_start[a:b], out.start_logits[0].numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(flat_end[a:b], out.end_logits[0].numpy(), atol=1e-5, rtol=0)

        # Reference 2: one right-padded batch with an attention mask, through the packed-enabled
        # model (its padded fallback) and the original one.
        width = max(LENGTHS)
        ids = torch.full((len(features), width), 1 if kind == "roberta" else 0, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for i in range(len(features)):
            row_ids, row_types = feature_row(features, i)
            n = row_ids.shape[1]
            ids[i, :n], types[i, :n], mask[i, :n] = row_ids[0], row_types[0], 1
        for m in (model, packed):
            out = m(input_ids=ids, **type_kwargs(m, types), attention_mask=mask)
            for i, n in enumerate(LENGTHS):
                a = features.feature_start[i]
                np.testing.assert_allclose(flat_start[a : a + n], out.start_logits[i, :n].numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta", "modernbert", *NEW_KINDS])
def test_packed_loss_and_gradients_equal_per_feature_losses(kind):
    features = make_features(LENGTHS, seed=3)
    model = tiny_model(kind).train()
    packed = packed_model(model).train()
    batches = packed_batches(features, model, tokens_per_pack=80)
    assert len(batches) > 1  # the check below also covers averaging over several packs

    # Reference: HF's own loss on each feature alone, averaged per pack, then over packs.
    model.zero_grad()
    ref_total = 0.0
    for b in batches:
        members = b["feature_index"][b["feature_valid"]].tolist()
        losses = []
        for i in members:
            ids, types = feature_row(features, i)
            out = model(
                input_ids=ids, **type_kwargs(model, types),
                start_positions=torch.tensor([int(features.start_positions[i])]),
                end_positions=torch.tensor([int(features.end_positions[i])]),
            )
            losses.append(out.loss)
        loss = torch.stack(losses).mean()
        loss.backward()
        ref_total += loss.item()

    packed.zero_grad()
    total = 0.0
    for b in batches:
        s, e = packing.packed_forward(packed, b, model.config.model_type)
        loss = packing.packed_qa_loss(s, e, b)
        loss.backward()
        total += loss.item()

    assert total == pytest.approx(ref_total, abs=1e-5)
    ref_grads = dict(model.named_parameters())
    for name, p in packed.named_parameters():
        if p.grad is None:
            assert ref_grads[name].grad is None or not ref_grads[name].grad.any(), name
            continue
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_loss_ignores_empty_slots_and_stays_finite():
    features = make_features([4, 6])
    model = tiny_model("bert").train()
    packed = packed_model(model).train()
    # Six slots for two features: four empty, zero-length segments.
    batch = batching.make_packed_batch(features, np.array([0, 1]), 32, max_features=6, max_seqlen=8)
    s, e = packing.packed_forward(packed, batch)
    loss = packing.packed_qa_loss(s, e, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in packed.parameters() if p.grad is not None)
    # Independent computation: plain cross-entropy on each feature's own logits.
    ce = torch.nn.functional.cross_entropy
    expected = []
    for i, a in enumerate((0, 4)):
        n = (4, 6)[i]
        st, en = int(features.start_positions[i]), int(features.end_positions[i])
        expected.append((ce(s[0, a : a + n], torch.tensor(st)) + ce(e[0, a : a + n], torch.tensor(en))) / 2)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-6)


@pytest.mark.parametrize("window", [None, 3])
def test_per_segment_and_block_diagonal_attention_agree(window):
    """The CPU's eager path (one SDPA per feature) and the fixed-shape path torch.compile sees are the same
    attention, with and without a local window."""
    torch.manual_seed(0)
    batch = batching.make_packed_batch(make_features([7, 12, 1, 9]), np.arange(4), 40, max_features=6, max_seqlen=12)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    a = packing._per_segment_sdpa(q, k, v, batch["cu_seqlens"], 0.0, None, window)
    b = packing._block_diagonal_sdpa(q, k, v, batch["cu_seqlens"], 0.0, None, window)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # An independent reference for one feature (tokens 7..18): plain softmax attention over its own tokens.
    scores = q[0, :, 7:19] @ k[0, :, 7:19].transpose(-1, -2) / 8 ** 0.5
    if window is not None:
        pos = torch.arange(12)
        scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > window, float("-inf"))
    torch.testing.assert_close(a[0, 7:19], (scores.softmax(-1) @ v[0, :, 7:19]).transpose(0, 1), atol=1e-6,
                               rtol=1e-5)


def tiny_xlnet():
    return XLNetForQuestionAnsweringSimple(XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=4, d_inner=37))


@pytest.mark.parametrize("kind", ["bert", "electra", *NEW_KINDS])
def test_supports_packing(kind):
    assert packing.supports_packing(tiny_model(kind))


def test_supports_packing_refuses_what_would_not_be_exact():
    xlnet = tiny_xlnet()
    assert not packing.supports_packing(xlnet)
    with pytest.raises(ValueError, match="not supported"):
        packing.enable_packed_attention(xlnet)
    # transformers 5's own BERT reads a relative config as absolute (its distance tables dropped): refused;
    # modeling_relative's model of the same config is accepted (above).
    assert not packing.supports_packing(BertForQuestionAnswering(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        position_embedding_type="relative_key")))


def test_position_offset_follows_roberta_convention():
    assert packing.position_offset(tiny_model("bert")) == 0
    assert packing.position_offset(tiny_model("roberta")) == 2  # pad_token_id 1 + 1


# ------------------------------------------------------------------------------------------
# The families added to packing: ALBERT, DistilBERT, the relative-position BERT
# ------------------------------------------------------------------------------------------
@pytest.fixture
def block_diagonal(monkeypatch):
    """Force the fixed-shape block-diagonal path a GPU (without the varlen kernel) and torch.compile take."""
    monkeypatch.setattr(packing, "use_block_diagonal", lambda query: True)


def per_feature_reference(model, features, batches):
    """Per pack: the mean of HF's loss on each member feature alone (backward run); returns the summed losses."""
    total = 0.0
    for b in batches:
        losses = []
        for i in b["feature_index"][b["feature_valid"]].tolist():
            ids, types = feature_row(features, i)
            losses.append(model(input_ids=ids, **type_kwargs(model, types),
                                start_positions=torch.tensor([int(features.start_positions[i])]),
                                end_positions=torch.tensor([int(features.end_positions[i])])).loss)
        loss = torch.stack(losses).mean()
        loss.backward()
        total += loss.item()
    return total


def packed_training_step(packed, batches):
    total = 0.0
    for b in batches:
        s, e = packing.packed_forward(packed, b, packed.config.model_type)
        loss = packing.packed_qa_loss(s, e, b)
        loss.backward()
        total += loss.item()
    return total


def assert_same_gradients(packed, model, names=None):
    reference = dict(model.named_parameters())
    checked = 0
    for name, p in packed.named_parameters():
        if names is not None and not any(part in name for part in names):
            continue
        if p.grad is None:
            assert reference[name].grad is None or not reference[name].grad.any(), name
            continue
        torch.testing.assert_close(p.grad, reference[name].grad, atol=1e-5, rtol=1e-4, msg=name)
        checked += 1
    assert checked


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_block_diagonal_path_equals_per_feature_logits_loss_and_gradients(kind, block_diagonal):
    """The GPU / compiled path of each new family: logits of a pack longer than max_position_embeddings
    (so a relative distance taken across the stream instead of inside the feature would index out of the
    table), the loss and every gradient, against each feature run alone."""
    features = make_features(LENGTHS, seed=5)
    model = tiny_model(kind).train()
    packed = packed_model(model).train()
    batches = packed_batches(features, model, tokens_per_pack=2 * MAX_POS)
    assert batches[0]["input_ids"].shape[1] > MAX_POS
    model.zero_grad()
    ref_total = per_feature_reference(model, features, batches)
    packed.zero_grad()
    assert packed_training_step(packed, batches) == pytest.approx(ref_total, abs=1e-5)
    assert_same_gradients(packed, model)

    with torch.no_grad():
        starts = [packing.packed_forward(packed.eval(), b, model.config.model_type)[0] for b in batches]
        flat = batching.unpack_logits(starts, batches, len(features.input_ids))
        for i in range(len(features)):
            ids, types = feature_row(features, i)
            a, b = features.feature_start[i], features.feature_start[i + 1]
            out = model.eval()(input_ids=ids, **type_kwargs(model, types))
            np.testing.assert_allclose(flat[a:b], out.start_logits[0].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", RELATIVE_KINDS)
def test_relative_packed_scores_take_distances_inside_each_feature(kind):
    """packed_relative_scores on a stream equals relative_scores of each feature alone (its diagonal blocks),
    independently of where the feature sits in the stream."""
    attention = tiny_model(kind).bert.encoder.layer[0].attention.self
    batch = batching.make_packed_batch(make_features([7, 12, 1, 9]), np.arange(4), 40, max_features=6, max_seqlen=12)
    segment, positions = packing.segment_positions(batch["cu_seqlens"], 40)
    assert torch.equal(positions, batch["position_ids"][0])  # the positions the embeddings get
    assert segment[:29].tolist() == [0] * 7 + [1] * 12 + [2] + [3] * 9
    torch.manual_seed(1)
    q, k = torch.randn(1, 4, 40, 8), torch.randn(1, 4, 40, 8)
    stream = attention.packed_relative_scores(q, k, positions, max_seqlen=12)
    for a, b in ((0, 7), (7, 19), (19, 20), (20, 29), (29, 40)):  # the last: a dummy pad segment
        alone = attention.relative_scores(q[:, :, a:b], k[:, :, a:b])
        for got, want in zip(stream, alone, strict=True):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got[..., a:b, a:b], want, atol=1e-6, rtol=1e-5)


def packed_loss_and_logits(model, batch):
    start, end = packing.packed_forward(model, batch, model.config.model_type)
    return packing.packed_qa_loss(start, end, batch), start


@pytest.mark.parametrize("kind", ["albert", "distilbert", "relative_key_query"])
def test_compiled_packed_step_equals_eager(kind):
    """torch.compile (aot_eager: dynamo and autograd tracing, no C++ build) of the packed forward and backward
    gives the eager packed loss, logits and gradients; compiled code takes the block-diagonal path."""
    features = make_features([17, 40, 5, 23, 9])
    model = tiny_model(kind).train()
    eager, compiled = packed_model(model).train(), packed_model(model).train()
    batch = packed_batches(features, model, tokens_per_pack=96)[0]
    loss, start = packed_loss_and_logits(eager, batch)
    loss.backward()
    compiled_loss, compiled_start = torch.compile(packed_loss_and_logits, backend="aot_eager")(compiled, batch)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_start, start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_loss, loss, atol=1e-5, rtol=1e-5)
    assert_same_gradients(compiled, eager)


def set_attention_dropout(model, p: float) -> None:
    """Attention-probability dropout only (ALBERT, DistilBERT, relative BERT module names)."""
    names = ("attention.attention_dropout", "attention.dropout", "attention.self.dropout")
    found = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and n.endswith(names)]
    assert found
    for module in found:
        module.p = p


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_packed_attention_dropout_follows_the_choice(kind):
    """enable_packed_attention(attention_dropout=False) trains without attention dropout, True keeps it: with
    only attention dropout on, training-mode logits equal eval-mode logits when it is off, and not when on."""
    features = make_features([17, 40, 5, 23, 9])
    model = tiny_model(kind)
    batch = packed_batches(features, model)[0]
    with torch.no_grad():
        reference = packing.packed_forward(packed_model(model), batch, model.config.model_type)[0]
    for attention_dropout in (False, True):
        twin = copy.deepcopy(model)
        set_attention_dropout(twin, 0.5)
        packing.enable_packed_attention(twin, attention_dropout=attention_dropout)
        torch.manual_seed(0)
        with torch.no_grad():
            start = packing.packed_forward(twin.train(), batch, model.config.model_type)[0]
        if attention_dropout:
            assert (start - reference).abs().max() > 1e-4  # tiny random heads: logits of about 0.1
        else:
            torch.testing.assert_close(start, reference, atol=1e-6, rtol=0)


def test_check_packing_accepts_the_new_families_and_refuses_the_others():
    for kind in NEW_KINDS:
        model = tiny_model(kind)
        qa_model.check_packing(model.config)  # before loading: from the config
        qa_model.check_packing(model.config, model)
    refused = {"xlnet": XLNetConfig(), "xlm": XLMConfig(), "deberta": DebertaConfig(), "deberta-v2": DebertaV2Config()}
    for model_type, config in refused.items():
        with pytest.raises(qa_model.PackingUnsupported, match=f"not {model_type}: drop --packing"):
            qa_model.check_packing(config)
    with pytest.raises(qa_model.PackingUnsupported, match="not xlnet"):
        qa_model.check_packing(tiny_xlnet().config, tiny_xlnet())
    # A relative config of another family, and transformers' own BERT of a relative config, stay refused.
    with pytest.raises(qa_model.PackingUnsupported, match=r"not roberta \(relative_key\)"):
        qa_model.check_packing(RobertaConfig(position_embedding_type="relative_key"))
    relative = tiny_model("relative_key")
    plain = BertForQuestionAnswering(relative.config)
    with pytest.raises(qa_model.PackingUnsupported, match=r"not bert \(relative_key\)"):
        qa_model.check_packing(relative.config, plain)
