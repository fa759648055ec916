"""run_squad.py --packing: the packed path gives the padded path's answers and resumes exactly (CPU, fp32)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import run_squad
from cli_helpers import common_flags, small_squad_file, small_v2_file
from squad_internals import batching, checkpoints
from tiny_models import tiny_model_dir

pytestmark = pytest.mark.slow


def v1_flags(model: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--no_cuda", "--max_seq_length", "192",
            "--doc_stride", "64", "--per_gpu_eval_batch_size", "16", "--fp32"]  # exact logits on every CPU


@pytest.fixture(scope="module")
def tiny_relative_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """tiny_bert_dir's shape and tokenizer as modeling_relative's relative_key_query BERT (random weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig

    from squad_internals import modeling_relative

    folder = tmp_path_factory.mktemp("tiny-relative")
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.position_embedding_type = "relative_key_query"
    torch.manual_seed(0)
    model = modeling_relative.question_answering_model_from_config(config)
    with torch.no_grad():  # 4.x's init (std 0.02) leaves the distance terms too small to matter
        for layer in model.bert.encoder.layer:
            layer.attention.self.distance_embedding.weight.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["bert", "albert", "distilbert", "relative_key_query"])
def test_packed_evaluation_answers_like_padded_evaluation(family, request, tmp_path_factory, squad_dir, tmp_path):
    """Random weights give arbitrary but deterministic logits: a sensitive comparison of the two paths."""
    model = {"bert": lambda: request.getfixturevalue("tiny_bert_dir"),
             "relative_key_query": lambda: request.getfixturevalue("tiny_relative_dir")}.get(
        family, lambda: tiny_model_dir(family, tmp_path_factory))()
    # v1.1: every question has an answer, so every prediction is a span.
    dev = small_squad_file(squad_dir / "dev-v1.1.json", tmp_path / "dev.json", questions=60)
    for name, extra in (("padded", []), ("packed", ["--packing"])):
        assert run_squad.main([*v1_flags(model, tmp_path / name), "--do_eval", "--predict_file", str(dev),
                               *extra]) == 0
    padded, packed = (json.loads((tmp_path / n / "nbest_predictions_final.json").read_text())
                      for n in ("padded", "packed"))
    assert padded.keys() == packed.keys() and len(padded) == 60
    for qid in padded:
        assert [e["text"] for e in padded[qid]] == [e["text"] for e in packed[qid]], qid
        for a, b in zip(padded[qid], packed[qid], strict=True):
            assert a["start_logit"] == pytest.approx(b["start_logit"], abs=1e-4)
            assert a["end_logit"] == pytest.approx(b["end_logit"], abs=1e-4)
    assert all(answer for answer in json.loads((tmp_path / "packed" / "predictions_final.json").read_text()).values())


def test_packed_training_resumes_across_epochs_like_an_unbroken_run(tiny_bert_dir, squad_dir, tmp_path):
    """Packs differ per epoch (seeded first-fit), so epochs have different step counts: the position
    saved in the checkpoint must still point at the same pack after a restart."""
    import shutil

    train_file = small_v2_file(squad_dir, tmp_path / "train.json", questions=40)
    dev_file = small_v2_file(squad_dir, tmp_path / "dev.json", questions=20)
    flags = ["--do_train", "--do_eval", "--train_file", str(train_file), "--predict_file", str(dev_file),
             "--packing", "--pack_tokens", "640", "--max_steps", "40", "--save_steps", "15",
             "--gradient_accumulation_steps", "2", "--logging_steps", "1000"]
    unbroken = tmp_path / "unbroken"
    assert run_squad.main([*common_flags(tiny_bert_dir, unbroken), *flags]) == 0
    state = checkpoints.load_trainer_state(unbroken / "checkpoint-30")
    assert state["position"]["epoch"] >= 2, "the run crosses epoch boundaries"
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(unbroken / "checkpoint-15", resumed / "checkpoint-15")
    assert run_squad.main([*common_flags(tiny_bert_dir, resumed), *flags, "--resume_from_checkpoint", "latest"]) == 0
    a, b = load_file(unbroken / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (unbroken / "predictions_40.json").read_text() == (resumed / "predictions_40.json").read_text()


def test_epoch_packs_hold_every_feature_once_and_change_with_the_epoch(tiny_bert_dir, squad_dir, tmp_path):
    from transformers import AutoTokenizer

    import utils_squad

    examples, _ = utils_squad.read_squad_examples(small_v2_file(squad_dir, tmp_path / "t.json", questions=60),
                                                  version_2_with_negative=True, is_training=True)
    features = utils_squad.convert_examples_to_features(
        examples, AutoTokenizer.from_pretrained(tiny_bert_dir), utils_squad.FeatureSettings(192, 64, 64, is_training=True))
    packed = batching.PackedBatches(8, batching.SpanHead(), "bert", tokens=1024, slots=64, max_seqlen=192)
    lengths = features.lengths()

    def packs_of(epoch):
        steps = batching.epoch_plan(packed, lengths, seed=7 + epoch, rank=0, world_size=1, accum=1)
        assert all(len(group) == 1 for group in steps)
        return [group[0] for group in steps]

    epochs = [packs_of(epoch) for epoch in (0, 1)]
    for packs in epochs:
        assert sorted(np.concatenate(packs).tolist()) == list(range(len(features)))
        assert all(lengths[p].sum() <= 1024 for p in packs)
    assert [p.tolist() for p in epochs[0]] != [p.tolist() for p in epochs[1]]
    assert [p.tolist() for p in epochs[0]] == [p.tolist() for p in packs_of(0)], "a deterministic function of (seed, epoch)"


def test_packing_an_unsupported_family_is_refused_before_any_work(tmp_path_factory, squad_dir, tmp_path, capsys):
    model = tiny_model_dir("xlnet", tmp_path_factory)
    code = run_squad.main([*v1_flags(model, tmp_path / "o"), "--do_eval", "--predict_file",
                           str(squad_dir / "dev-v1.1.json"), "--packing"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == ("error: --packing supports bert, roberta, xlm-roberta, electra, albert, "
                                    "distilbert, modernbert (bert also with relative_key or relative_key_query "
                                    "positions), not xlnet: drop --packing")
    assert "features" not in err, "refused before featurization"
