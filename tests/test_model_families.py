"""Every model family of the seed experiments trains, decodes, saves, reloads and predicts the same.

Each family's tiny random model (tests/tiny_models.py; relative-position BERT through
modeling_relative) trains a few steps through run_squad.main on the real SQuAD 2.0 sample, evaluating
the in-memory weights at the last step; a second run evaluates the saved folder. Both must give
every question a prediction, only exact substrings of the context, and identical files.
"""

import json
from pathlib import Path

import pytest

import run_squad
from cli_helpers import question_ids, small_v2_file
from tiny_models import tiny_config, tiny_tokenizer

pytestmark = pytest.mark.slow

FAMILIES = ["bert", "bert-cased", "albert", "roberta", "xlnet", "xlm", "electra", "distilbert", "deberta-v2", "modernbert",
            "relative_key", "relative_key_query"]
UNCASED = {"bert", "albert", "electra", "distilbert", "relative_key", "relative_key_query"}
STEPS = 3


def save_tiny_model(family: str, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForQuestionAnswering

    from squad_internals import modeling_relative

    relative = family.startswith("relative")
    tokenizer = tiny_tokenizer("bert" if relative else family)
    config = tiny_config("bert" if relative else family, tokenizer)
    torch.manual_seed(0)
    if relative:
        config.position_embedding_type = family
        model = modeling_relative.question_answering_model_from_config(config)
    else:
        model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def contexts_by_id(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {qa["id"]: p["context"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}


def flags(model: Path, out: Path, family: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--version_2_with_negative",
            "--no_cuda", "--max_seq_length", "128", "--doc_stride", "48", "--per_gpu_train_batch_size", "8",
            "--per_gpu_eval_batch_size", "16", "--learning_rate", "1e-3", "--seed", "7",
            *(["--do_lower_case"] if family in UNCASED else [])]


@pytest.fixture(scope="module")
def sample(tmp_path_factory, squad_dir):
    folder = tmp_path_factory.mktemp("families-data")
    return (small_v2_file(squad_dir, folder / "train.json", questions=48),
            small_v2_file(squad_dir, folder / "dev.json", questions=40))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_decodes_saves_reloads_and_predicts_the_same(family, sample, tmp_path):
    train_file, dev_file = sample
    model = save_tiny_model(family, tmp_path / "init")
    trained, reloaded = tmp_path / "trained", tmp_path / "reloaded"
    code = run_squad.main([*flags(model, trained, family), "--do_train", "--train_file", str(train_file),
                           "--predict_file", str(dev_file), "--max_steps", str(STEPS), "--save_steps", "0",
                           "--evaluate_during_training", "--eval_steps", str(STEPS)])
    assert code == 0
    code = run_squad.main([*flags(trained, reloaded, family), "--do_eval", "--predict_file", str(dev_file)])
    assert code == 0

    contexts = contexts_by_id(dev_file)
    names = (f"predictions_{STEPS}.json", f"nbest_predictions_{STEPS}.json", f"null_odds_{STEPS}.json")
    for name in names:  # in-memory weights during training == the saved folder, loaded again
        assert json.loads((trained / name).read_text()) == json.loads((reloaded / name).read_text()), name
    predictions = json.loads((reloaded / names[0]).read_text())
    nbest = json.loads((reloaded / names[1]).read_text())
    assert set(predictions) == set(nbest) == question_ids(dev_file)
    assert all(answer == "" or answer in contexts[qid] for qid, answer in predictions.items())
    spans = [(qid, entry["text"]) for qid, entries in nbest.items() for entry in entries if entry["text"]]
    assert spans, "the n-best lists hold real spans"
    assert all(text in contexts[qid] for qid, text in spans)
    config = json.loads((trained / "config.json").read_text())
    if family.startswith("relative"):
        assert config["position_embedding_type"] == family
    if family in ("xlnet", "xlm"):
        assert config["architectures"][0].endswith("ForQuestionAnswering")  # the beam head, not ...Simple
