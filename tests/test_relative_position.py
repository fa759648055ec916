"""BERT relative position embeddings under transformers 5 reproduce transformers 4.x exactly.

The fixtures in tests/fixtures/relative_<type>/ were written by transformers 4.x
(tests/fixtures/make_relative_fixture.py): tiny models plus their eval-mode logits on padded inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering

from squad_internals import modeling_relative
from squad_internals.modeling_relative import (
    RelativeBertForQuestionAnswering,
    RelativePositionError,
    is_relative_position_config,
    load_question_answering_model,
    question_answering_model_from_config,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELATIVE = ("relative_key", "relative_key_query")
TOLERANCE = 1e-5


def fixture_dir(kind: str) -> Path:
    return FIXTURES / f"relative_{kind}"


def reference(kind: str) -> dict[str, np.ndarray]:
    with np.load(fixture_dir(kind) / "reference.npz") as data:
        return {key: data[key] for key in data.files}


def model_inputs(ref: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(ref[k].astype(np.int64)) for k in ("input_ids", "token_type_ids", "attention_mask")}


def logits(model, inputs) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return out.start_logits.numpy(), out.end_logits.numpy()


def max_abs_diff(model, ref) -> float:
    start, end = logits(model, model_inputs(ref))
    return float(max(np.abs(start - ref["start_logits"]).max(), np.abs(end - ref["end_logits"]).max()))


def tiny_relative_config(kind: str = "relative_key_query", **overrides) -> BertConfig:
    settings = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                    max_position_embeddings=24, position_embedding_type=kind)
    settings.update(overrides)
    return BertConfig(**settings)


def test_fixtures_come_from_transformers_4():
    for kind in (*RELATIVE, "absolute"):
        ref = reference(kind)
        assert str(ref["transformers_version"]).startswith("4."), kind
        config = json.loads((fixture_dir(kind) / "config.json").read_text())
        assert config["position_embedding_type"] == kind
        assert config["transformers_version"] == str(ref["transformers_version"])
        # Rows padded by different amounts, and one row using every position (all distances).
        assert sorted(ref["attention_mask"].sum(axis=1).tolist()) == [24, 53, 64]


def test_config_detection_survives_transformers_5_config():
    assert is_relative_position_config(BertConfig(position_embedding_type="relative_key"))
    assert is_relative_position_config(BertConfig(position_embedding_type="relative_key_query"))
    assert not is_relative_position_config(BertConfig(position_embedding_type="absolute"))
    assert not is_relative_position_config(BertConfig())  # field not declared by transformers 5
    for kind in RELATIVE:
        loaded = BertConfig.from_pretrained(fixture_dir(kind))
        assert is_relative_position_config(loaded), kind
    assert not is_relative_position_config(BertConfig.from_pretrained(fixture_dir("absolute")))


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_fixture_matches_transformers_4_logits(kind):
    model = load_question_answering_model(fixture_dir(kind))
    assert isinstance(model, RelativeBertForQuestionAnswering)
    assert model.config.position_embedding_type == kind
    assert max_abs_diff(model, reference(kind)) <= TOLERANCE


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_terms_matter_for_the_fixture(kind):
    """The comparison above can fail: without the distance embeddings the logits move far beyond 1e-5."""
    model = load_question_answering_model(fixture_dir(kind))
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.distance_embedding.weight.zero_()
    assert max_abs_diff(model, reference(kind)) > 1e-2


@pytest.mark.parametrize("kind", RELATIVE)
def test_relative_checkpoint_loads_every_weight(kind):
    model, info = RelativeBertForQuestionAnswering.from_pretrained(fixture_dir(kind), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(str(fixture_dir(kind) / "model.safetensors"), "pt") as f:
        table = f.get_tensor("bert.encoder.layer.1.attention.self.distance_embedding.weight")
    assert table.shape == (2 * 64 - 1, 32 // 4)
    assert torch.equal(model.bert.encoder.layer[1].attention.self.distance_embedding.weight, table)


@pytest.mark.parametrize("kind", RELATIVE)
def test_plain_transformers_5_drops_distance_embeddings(kind):
    """The bug this module fixes: AutoModelForQuestionAnswering loads the checkpoint as absolute BERT."""
    model, info = AutoModelForQuestionAnswering.from_pretrained(fixture_dir(kind), output_loading_info=True)
    dropped = sorted(k for k in info["unexpected_keys"] if "distance_embedding" in k)
    assert dropped == [f"bert.encoder.layer.{i}.attention.self.distance_embedding.weight" for i in range(2)]
    assert max_abs_diff(model, reference(kind)) > 1e-2


def test_absolute_fixture_goes_through_the_plain_path():
    model = load_question_answering_model(fixture_dir("absolute"))
    assert type(model) is BertForQuestionAnswering
    assert max_abs_diff(model, reference("absolute")) <= TOLERANCE


@pytest.mark.parametrize("kind", RELATIVE)
def test_save_and_reload_keeps_logits_and_4x_layout(kind, tmp_path):
    model = load_question_answering_model(fixture_dir(kind))
    inputs = model_inputs(reference(kind))
    before = logits(model, inputs)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["position_embedding_type"] == kind
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved_keys = set(f.keys())
    with safe_open(str(fixture_dir(kind) / "model.safetensors"), "pt") as f:
        assert saved_keys == set(f.keys())  # same keys as 4.x wrote, so 4.x can load ours too
    reloaded = load_question_answering_model(tmp_path)
    after = logits(reloaded, inputs)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_sdpa_request_falls_back_to_eager():
    model = load_question_answering_model(fixture_dir("relative_key"), attn_implementation="sdpa",
                                          dtype=torch.float32)
    assert model.config._attn_implementation == "eager"
    assert max_abs_diff(model, reference("relative_key")) <= TOLERANCE


def test_training_steps_update_distance_embeddings():
    torch.manual_seed(0)
    model = load_question_answering_model(fixture_dir("relative_key_query"))
    model.train()
    # The first 16 positions of two rows: enough for gradients, cheap on a busy 2-core machine.
    inputs = {k: v[:2, :16] for k, v in model_inputs(reference("relative_key_query")).items()}
    labels = {"start_positions": torch.tensor([3, 5]), "end_positions": torch.tensor([4, 9])}
    tables = [layer.attention.self.distance_embedding.weight for layer in model.bert.encoder.layer]
    before = [t.detach().clone() for t in tables]
    positions_before = model.bert.embeddings.position_embeddings.weight.detach().clone()
    assert not model.bert.embeddings.position_embeddings.weight.requires_grad  # unused: frozen for DDP
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(**inputs, **labels).loss
        loss.backward()
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert all(not torch.equal(b, t) for b, t in zip(before, tables, strict=True))
    assert torch.equal(positions_before, model.bert.embeddings.position_embeddings.weight)


def test_fresh_model_from_config_and_output_attentions():
    config = tiny_relative_config("relative_key")
    model = question_answering_model_from_config(config)
    assert isinstance(model, RelativeBertForQuestionAnswering)
    table = model.bert.encoder.layer[0].attention.self.distance_embedding.weight
    assert table.shape == (47, 8) and 0 < table.std() < 0.1  # initialised like 4.x: normal(0, 0.02)
    ids = torch.tensor([[2, 7, 8, 9, 3, 0]])
    out = model.eval()(input_ids=ids, attention_mask=(ids != 0).long(), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 2, 6, 6)
    assert torch.all(out.attentions[0][..., -1] == 0)  # the padded key gets no attention
    plain = question_answering_model_from_config(tiny_relative_config("absolute"))
    assert type(plain) is BertForQuestionAnswering


def test_too_long_sequence_is_a_one_line_error():
    model = question_answering_model_from_config(tiny_relative_config(max_position_embeddings=8))
    with pytest.raises(RelativePositionError, match="sequence length 9 exceeds max_position_embeddings 8"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long))


def test_pretraining_style_checkpoint_needs_only_a_new_head(tmp_path):
    """A base (no QA head) relative checkpoint fine-tunes: only qa_outputs is new, nothing is dropped."""
    base = modeling_relative.RelativeBertModel(tiny_relative_config())
    base.save_pretrained(tmp_path)
    model = load_question_answering_model(tmp_path)
    assert torch.equal(model.bert.encoder.layer[1].attention.self.distance_embedding.weight,
                       base.encoder.layer[1].attention.self.distance_embedding.weight)


def test_checkpoint_without_distance_embeddings_is_refused(tmp_path):
    """An absolute checkpoint relabelled relative would leave the distance tables random: refuse it."""
    BertForQuestionAnswering(tiny_relative_config("absolute")).save_pretrained(tmp_path)
    config = tiny_relative_config("relative_key")
    with pytest.raises(RelativePositionError) as caught:
        load_question_answering_model(tmp_path, config=config)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "distance_embedding" in message


def test_unsupported_family_is_refused():
    config = tiny_relative_config()
    config.model_type = "roberta"
    with pytest.raises(RelativePositionError, match="model_type 'roberta'"):
        modeling_relative.check_relative_config(config)
