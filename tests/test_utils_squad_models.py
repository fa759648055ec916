"""tiny_model_dir: each family's tiny model + tokenizer loads from its folder and runs on collated features."""

import pytest

import utils_squad as us
from squad_internals import batching
from tiny_models import FAMILIES, tiny_model_dir

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_loads_and_runs_on_collated_features(family, tmp_path_factory):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = tiny_model_dir(family, tmp_path_factory)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    context = "The Normans gave their name to Normandy, a region in France."
    examples = [us.SquadExample("a", "Who gave their name?", context, [{"text": "Normans", "answer_start": 4}], False),
                us.SquadExample("b", "Where?", context, [], True)]
    feats = us.convert_examples_to_features(examples, tokenizer, us.FeatureSettings(32, 8, 8, is_training=True))
    assert feats.padding_side == ("left" if family == "xlnet" else "right")
    batch = {k: torch.from_numpy(v) for k, v in batching.collate(feats, list(range(len(feats))), with_labels=True).items()}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "start_positions", "end_positions")}
    if "token_type_ids" in tokenizer.model_input_names:
        inputs["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        out = model(**inputs)
    assert out.start_logits.shape == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
