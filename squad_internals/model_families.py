"""What the project knows of each model family, in one table: its attention, whether and how it packs, its
QA head, the order of its inputs, its relative positions and the mask it takes.

Why a module of its own: these facts decide the path of every batch (batching.py, packing.py), the fast path
(fast_path.py), the model's loading (qa_model.py, modeling_relative.py), and once lived in nine lists in five
modules. Adding a family is one record here plus its tests (tests/test_model_family_table.py). Standard
library only, so that the command line and fast_path's rules read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Packing:
    """How a family's encoder takes packed batches (packing.py: flash attention's varlen kernel on a GPU)."""

    token_type_ids: bool = True  # its forward takes token type ids (DistilBERT and ModernBERT have none)
    positions_after_padding: bool = False  # position ids start at pad_token_id + 1 (fairseq's RoBERTa)
    masks_per_layer_kind: bool = False  # a mask per layer kind, none needed when packed (ModernBERT)


@dataclass(frozen=True)
class Family:
    """One model type's facts; a type without a record gets Family(model_type): the classic rules alone."""

    model_type: str
    # "sdpa": transformers' SDPA attention, whose kernels fast_path chooses; "own": the family computes it itself;
    # None: a family named only by the classic script's input rule, of which nothing else is claimed.
    attention: str | None = None
    packing: Packing | None = None  # None: padded batches only
    token_type_ids: bool = True  # the classic script's inputs carry token type ids
    beam_head: bool = False  # fine-tuned with the XLNet/XLM beam-search head (top starts and ends)
    context_first: bool = False  # its tokenizer pads on the left and puts the passage first (read off padding_side)
    relative_positions: bool = False  # relative_key(_query) positions through modeling_relative
    # Its forward takes a prepared 4-D boolean key-padding mask as it is (under SDPA), so transformers neither
    # builds one nor reads the 2-D mask on the host (batching.takes_prepared_mask).
    prepared_mask: bool = False


_BERT_LIKE = {"attention": "sdpa", "prepared_mask": True}

TABLE = (
    Family("bert", **_BERT_LIKE, packing=Packing(), relative_positions=True),
    Family("roberta", **_BERT_LIKE, packing=Packing(positions_after_padding=True), token_type_ids=False),
    Family("xlm-roberta", **_BERT_LIKE, packing=Packing(positions_after_padding=True), token_type_ids=False),
    Family("electra", **_BERT_LIKE, packing=Packing()),
    Family("albert", **_BERT_LIKE, packing=Packing()),
    Family("distilbert", **_BERT_LIKE, packing=Packing(token_type_ids=False), token_type_ids=False),
    Family("modernbert", attention="sdpa", packing=Packing(token_type_ids=False, masks_per_layer_kind=True),
           token_type_ids=False),
    Family("xlnet", attention="own", beam_head=True, context_first=True),
    Family("xlm", attention="own", beam_head=True, token_type_ids=False),
    Family("deberta-v2", attention="own"),
    Family("camembert", token_type_ids=False),
    Family("bart", token_type_ids=False),
    Family("longformer", token_type_ids=False),
)
FAMILIES = {f.model_type: f for f in TABLE}


def family(model_type: str) -> Family:
    """The record of a model type; one without a record has every default (no packing, no SDPA rules)."""
    return FAMILIES.get(model_type) or Family(model_type)


def packing_of(model_type: str) -> Packing:
    """How a model type packs (the default Packing for one that does not: what packed inputs assume)."""
    return family(model_type).packing or Packing()


# The lists the modules read, in the table's order (error messages name them in it).
PACKING_TYPES = tuple(f.model_type for f in TABLE if f.packing is not None)
SDPA_TYPES = tuple(f.model_type for f in TABLE if f.attention == "sdpa")
RELATIVE_POSITION_MODEL_TYPES = tuple(f.model_type for f in TABLE if f.relative_positions)
BEAM_HEAD_TYPES = frozenset(f.model_type for f in TABLE if f.beam_head)
NO_TOKEN_TYPES = frozenset(f.model_type for f in TABLE if not f.token_type_ids)
PREPARED_MASK_TYPES = frozenset(f.model_type for f in TABLE if f.prepared_mask)
