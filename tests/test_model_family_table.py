"""model_families: the one table of model-family facts. Every list the modules read is derived from it and
equals the list that module held before (one home, nothing lost), and each fact it states agrees with what
transformers itself says of the family."""

import subprocess
import sys
from pathlib import Path

import pytest

from squad_internals import batching, fast_path, modeling_relative, packing, qa_model
from squad_internals import model_families as mf

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The lists as each module held them before the table (50412e4), order included where it was a tuple
# ------------------------------------------------------------------------------------------------

BEFORE = {
    "packing.SUPPORTED_MODEL_TYPES": ("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert",
                                      "modernbert"),
    "packing._OFFSET_POSITION_MODEL_TYPES": {"roberta", "xlm-roberta"},
    "packing._NO_TOKEN_TYPE_MODEL_TYPES": {"modernbert", "distilbert"},
    "fast_path.VARLEN_PACKING_TYPES": ("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert",
                                       "modernbert"),
    "fast_path.SDPA_TYPES": ("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "modernbert"),
    "batching.NO_TOKEN_TYPES": {"xlm", "roberta", "distilbert", "camembert", "bart", "longformer", "xlm-roberta",
                                "modernbert"},
    "batching.PREPARED_MASK_TYPES": {"bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert"},
    "qa_model.BEAM_HEAD_TYPES": {"xlnet", "xlm"},
    "modeling_relative.SUPPORTED_MODEL_TYPES": ("bert",),
}


def derived_now():
    """Each former list as the table gives it now, through the names the modules read."""
    return {
        "packing.SUPPORTED_MODEL_TYPES": packing.SUPPORTED_MODEL_TYPES,
        "packing._OFFSET_POSITION_MODEL_TYPES": {f.model_type for f in mf.TABLE
                                                 if mf.packing_of(f.model_type).positions_after_padding},
        "packing._NO_TOKEN_TYPE_MODEL_TYPES": {f.model_type for f in mf.TABLE
                                               if f.packing and not f.packing.token_type_ids},
        "fast_path.VARLEN_PACKING_TYPES": fast_path.VARLEN_PACKING_TYPES,
        "fast_path.SDPA_TYPES": fast_path.SDPA_TYPES,
        "batching.NO_TOKEN_TYPES": batching.NO_TOKEN_TYPES,
        "batching.PREPARED_MASK_TYPES": batching.PREPARED_MASK_TYPES,
        "qa_model.BEAM_HEAD_TYPES": qa_model.BEAM_HEAD_TYPES,
        "modeling_relative.SUPPORTED_MODEL_TYPES": modeling_relative.SUPPORTED_MODEL_TYPES,
    }


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_former_list_is_the_tables_and_unchanged(name):
    now, before = derived_now()[name], BEFORE[name]
    if isinstance(before, tuple):
        assert tuple(now) == before  # the order error messages name them in
    else:
        assert set(now) == before


def test_the_modules_read_the_table_not_a_copy():
    assert fast_path.VARLEN_PACKING_TYPES is mf.PACKING_TYPES and fast_path.SDPA_TYPES is mf.SDPA_TYPES
    assert packing.SUPPORTED_MODEL_TYPES is mf.PACKING_TYPES
    assert modeling_relative.SUPPORTED_MODEL_TYPES is mf.RELATIVE_POSITION_MODEL_TYPES
    assert batching.NO_TOKEN_TYPES is mf.NO_TOKEN_TYPES and batching.PREPARED_MASK_TYPES is mf.PREPARED_MASK_TYPES
    assert qa_model.BEAM_HEAD_TYPES is mf.BEAM_HEAD_TYPES


def test_one_record_per_family_and_the_rules_per_field():
    assert len(mf.FAMILIES) == len(mf.TABLE)
    for f in mf.TABLE:
        assert f.attention in ("sdpa", "own", None), f
        assert f.packing is None or f.attention == "sdpa", f  # packing swaps an SDPA attention for varlen
        assert not f.prepared_mask or f.attention == "sdpa", f  # only SDPA reads a boolean mask as such
        assert not f.relative_positions or f.packing is not None, f


def test_a_type_without_a_record_keeps_the_classic_rules():
    f = mf.family("mpnet")
    assert (f.attention, f.packing, f.token_type_ids, f.beam_head, f.prepared_mask) == (None, None, True, False, False)
    assert mf.packing_of("mpnet") == mf.Packing()  # packed inputs as for BERT (model_kwargs' default)
    assert packing.model_kwargs(_packed_batch(), "mpnet").keys() == packing.model_kwargs(_packed_batch()).keys()
    with pytest.raises(qa_model.PackingUnsupported, match="^--packing supports bert, roberta, xlm-roberta, electra, "
                                                          "albert, distilbert, modernbert .*not mpnet"):
        qa_model.check_packing(_Config("mpnet"))


def _packed_batch():
    return {k: k for k in ("input_ids", "token_type_ids", "position_ids", "cu_seqlens", "max_seqlen", "prepared_mask")}


class _Config:
    def __init__(self, model_type, pad_token_id=1):
        self.model_type, self.pad_token_id = model_type, pad_token_id


def test_packed_inputs_follow_the_records():
    assert "token_type_ids" not in packing.model_kwargs(_packed_batch(), "distilbert")
    assert packing.model_kwargs(_packed_batch(), "modernbert")["attention_mask"] == {"full_attention": None,
                                                                                     "sliding_attention": None}
    assert packing.model_kwargs(_packed_batch(), "roberta")["token_type_ids"] == "token_type_ids"
    assert [packing.position_offset(_Config(t, 1)) for t in ("bert", "roberta", "xlm-roberta", "electra")] == [0, 2, 2, 0]


# ------------------------------------------------------------------------------------------------
# The facts against transformers' own classes and configs (no weights: class attributes and default configs)
# ------------------------------------------------------------------------------------------------


def _qa_class_name(model_type):
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
    return MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES[model_type]


@pytest.mark.parametrize("family", [f for f in mf.TABLE if f.attention is not None], ids=lambda f: f.model_type)
def test_attention_is_sdpa_exactly_where_transformers_supports_it(family):
    import transformers
    assert getattr(transformers, _qa_class_name(family.model_type))._supports_sdpa is (family.attention == "sdpa")


@pytest.mark.parametrize("family", mf.TABLE, ids=lambda f: f.model_type)
def test_beam_head_families_have_transformers_beam_class(family):
    # The auto class of a family with a beam-search head is the "Simple" one; the beam class is beside it.
    import transformers
    name = _qa_class_name(family.model_type)
    assert name.endswith("Simple") is family.beam_head
    if family.beam_head:
        assert hasattr(transformers, name.removesuffix("Simple"))


@pytest.mark.parametrize("family", [f for f in mf.TABLE if f.packing], ids=lambda f: f.model_type)
def test_packed_token_type_ids_where_the_config_has_token_type_embeddings(family):
    from transformers import AutoConfig
    assert hasattr(AutoConfig.for_model(family.model_type), "type_vocab_size") is family.packing.token_type_ids


@pytest.mark.parametrize("family", [f for f in mf.TABLE if f.attention is not None], ids=lambda f: f.model_type)
def test_context_first_where_the_tokenizer_pads_on_the_left(family):
    import transformers
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    names = TOKENIZER_MAPPING_NAMES[family.model_type]
    name = names if isinstance(names, str) else next(n for n in reversed(names) if n)
    assert (getattr(transformers, name).padding_side == "left") is family.context_first


def test_the_table_and_fast_path_import_without_torch():
    code = "import sys; from squad_internals import model_families, fast_path; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
