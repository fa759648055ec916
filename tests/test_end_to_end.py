"""Whole runs of run_squad.py on the real SQuAD 2.0 sample with a tiny model (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_squad
from cli_helpers import REPO, common_flags, free_port, question_ids, run_cli, small_v2_file
from squad_internals import output_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, squad_dir):
    """One --do_train --do_eval run on the real sample, shared by the checks below."""
    out = tmp_path_factory.mktemp("trained") / "out"
    train_file = small_v2_file(squad_dir, out.parent / "train.json", articles=2, questions=400)
    code = run_squad.main([*common_flags(tiny_bert_dir, out), "--do_train", "--do_eval", "--train_file",
                           str(train_file), "--predict_file", str(squad_dir / "dev-v2.0.json"),
                           "--max_steps", "12", "--save_steps", "6", "--evaluate_during_training",
                           "--eval_steps", "6"])
    assert code == 0
    return out, squad_dir / "dev-v2.0.json"


def test_train_and_eval_write_every_output_with_every_question(trained):
    out, dev = trained
    ids = question_ids(dev)
    for name in ("predictions_12.json", "nbest_predictions_12.json", "null_odds_12.json",
                 "predictions_6.json", "eval_results.json", "eval_results.txt", "model.safetensors",
                 "config.json", "tokenizer.json", "training_args.json"):
        assert (out / name).is_file(), name
    predictions = json.loads((out / "predictions_12.json").read_text())
    nbest = json.loads((out / "nbest_predictions_12.json").read_text())
    null_odds = json.loads((out / "null_odds_12.json").read_text())
    assert set(predictions) == set(nbest) == set(null_odds) == ids
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"6", "12"}
    assert results["12"]["total"] == len(ids) == 888
    assert list(results["12"])[:3] == ["exact", "f1", "total"]
    assert "best_f1_thresh" in results["12"]
    assert (out / "checkpoint-6" / output_folder.TRAINER_STATE).is_file()
    assert (out / "checkpoint-12" / "model.safetensors").is_file()
    assert list((out / "runs").iterdir()), "TensorBoard event files"
    text = (out / "eval_results.txt").read_text().splitlines()
    assert text[0] == "step = 12" and text[1].startswith("exact = ")


def test_saved_model_loads_anywhere_and_answers(trained):
    """The output folder is a plain HuggingFace model: Auto classes load it with no code of ours.

    transformers 5 removed pipeline("question-answering") (it raises KeyError), so the check is what
    that pipeline did: encode the pair, take the best context span, map it back through offsets.
    """
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    context = "The Vistula is the longest river in Poland, flowing through Warsaw."
    enc = tokenizer("What flows through Warsaw?", context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
    with torch.no_grad():
        out_logits = model(**enc)
    start_logits = out_logits.start_logits[0].masked_fill(~in_context, -1e9)
    start = int(start_logits.argmax())
    end_logits = out_logits.end_logits[0].masked_fill(~in_context, -1e9)
    end_logits[:start] = -1e9
    end = int(end_logits.argmax())
    answer = context[int(offsets[start][0]):int(offsets[end][1])]
    assert answer and answer in context


def test_do_predict_on_a_file_without_answers(trained, tmp_path):
    out, dev = trained
    data = json.loads(dev.read_text())
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                for key in ("answers", "is_impossible", "plausible_answers"):
                    qa.pop(key, None)
    unanswered = tmp_path / "questions.json"
    unanswered.write_text(json.dumps(data))
    pred_out = tmp_path / "pred"
    code = run_squad.main(["--model_name_or_path", str(out), "--output_dir", str(pred_out), "--do_predict",
                           "--version_2_with_negative", "--predict_file", str(unanswered), "--no_cuda",
                           "--max_seq_length", "192", "--doc_stride", "64"])
    assert code == 0
    predictions = json.loads((pred_out / "predictions_12.json").read_text())
    assert set(predictions) == question_ids(dev)
    assert not (pred_out / "eval_results.json").exists()  # nothing to score against


def test_eval_all_checkpoints_in_step_order(trained, tmp_path, capsys):
    out, dev = trained
    code = run_squad.main(["--model_name_or_path", str(out), "--output_dir", str(out), "--do_eval",
                           "--eval_all_checkpoints", "--version_2_with_negative", "--predict_file", str(dev),
                           "--no_cuda", "--max_seq_length", "192", "--doc_stride", "64", "--overwrite_output_dir"])
    assert code == 0
    steps = [json.loads(line)["step"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert steps == ["6", "12", "12"]


def hf_rows(squad_file) -> list[dict]:
    """SQuAD JSON as rows of the HuggingFace squad_v2 dataset."""
    data = json.loads(squad_file.read_text())
    return [{"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
             "answers": {"text": [x["text"] for x in qa["answers"]],
                         "answer_start": [x["answer_start"] for x in qa["answers"]]}}
            for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


def test_dataset_name_reads_through_the_normal_pipeline(tiny_bert_dir, squad_dir, tmp_path, monkeypatch):
    """--dataset_name with a stand-in `datasets` package (no network): splits become JSON Lines in the
    feature cache, and --output_dir holds only this run's results."""
    import types

    splits = {"train": hf_rows(small_v2_file(squad_dir, tmp_path / "train.json", questions=60)),
              "validation": hf_rows(small_v2_file(squad_dir, tmp_path / "dev.json", questions=30))}
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split, cache_dir=None: splits[split] if name == "squad_v2" else 1 / 0
    monkeypatch.setitem(sys.modules, "datasets", fake)
    out = tmp_path / "out"
    code = run_squad.main([*common_flags(tiny_bert_dir, out), "--dataset_name", "squad_v2", "--do_train",
                           "--do_eval", "--max_steps", "2", "--save_steps", "0"])
    assert code == 0
    assert set(json.loads((out / "predictions_2.json").read_text())) == {r["id"] for r in splits["validation"]}
    assert not (out / "datasets").exists()


def test_dataset_name_without_the_datasets_package(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    code = run_squad.main([*common_flags(tiny_bert_dir, tmp_path / "o"), "--dataset_name", "squad_v2", "--do_eval"])
    assert code == 2
    assert capsys.readouterr().err == "error: --dataset_name needs the optional `datasets` package (pip install datasets)\n"


def torchrun_flags(tiny_bert_dir: Path, squad_dir: Path, tmp: Path, out: Path) -> list[str]:
    train_file = small_v2_file(squad_dir, tmp / "train.json", questions=120)
    return [str(REPO / "run_squad.py"), *common_flags(tiny_bert_dir, out), "--do_train", "--do_eval", "--train_file",
            str(train_file), "--predict_file", str(squad_dir / "dev-v2.0.json"), "--max_steps", "4", "--save_steps", "0"]


# Bit-identical results across layouts need the same thread count per process (float sums depend on it).
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def two_process_run(tiny_bert_dir, squad_dir, tmp_path_factory) -> Path:
    """One torchrun agent with two processes: trains 4 steps and evaluates; its output folder."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), *torchrun_flags(tiny_bert_dir, squad_dir, tmp, out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=TORCHRUN_ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"step": "4"' in done.stdout
    return out


def test_torchrun_two_processes_train_and_evaluate_like_one(two_process_run, squad_dir, tmp_path):
    out = two_process_run
    single = tmp_path / "single"
    again = run_cli(["--model_name_or_path", str(out), "--output_dir", str(single), "--do_eval",
                     "--version_2_with_negative", "--predict_file", str(squad_dir / "dev-v2.0.json"), "--no_cuda",
                     "--max_seq_length", "192", "--doc_stride", "64", "--per_gpu_eval_batch_size", "16", "--fp32"])
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("predictions_4.json", "nbest_predictions_4.json", "null_odds_4.json"):
        assert (single / name).read_text() == (out / name).read_text(), name


def test_two_torchrun_agents_one_process_each_equal_one_agent_with_two(two_process_run, tiny_bert_dir, squad_dir,
                                                                         tmp_path):
    """Multi-node as on a cluster, both nodes on 127.0.0.1: c10d rendezvous, gloo, one process per agent."""
    out, port = tmp_path / "two-nodes", free_port()
    agents = []
    for is_host in ("true", "false"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes",
               "--rdzv_conf", f"is_host={is_host}", *torchrun_flags(tiny_bert_dir, squad_dir, tmp_path, out)]
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=TORCHRUN_ENV, start_new_session=True))
    try:
        ends = [agent.communicate(timeout=600) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    for agent, (_, err) in zip(agents, ends, strict=True):
        assert agent.returncode == 0, err[-3000:]
    for name in ("model.safetensors", "predictions_4.json", "nbest_predictions_4.json", "null_odds_4.json",
                 "eval_results.json"):
        assert (out / name).read_bytes() == (two_process_run / name).read_bytes(), name


def test_the_older_launcher_passes_local_rank_and_evaluates_like_one_process(trained, tmp_path):
    """python -m torch.distributed.launch (no --use_env) hands each process --local-rank=N."""
    out, dev = trained
    launched, single = tmp_path / "launched", tmp_path / "single"
    flags = ["--model_name_or_path", str(out), "--do_eval", "--version_2_with_negative", "--predict_file", str(dev),
             "--no_cuda", "--max_seq_length", "192", "--doc_stride", "64", "--per_gpu_eval_batch_size", "16"]
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(REPO / "run_squad.py"), *flags, "--output_dir", str(launched)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The reference in a subprocess too: float sums depend on the thread count, which OMP_NUM_THREADS fixes.
    again = run_cli([*flags, "--output_dir", str(single)])
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("predictions_12.json", "null_odds_12.json"):
        assert (launched / name).read_text() == (single / name).read_text(), name


def test_resume_after_a_checkpoint_gives_the_same_weights_and_predictions(tiny_bert_dir, squad_dir, tmp_path):
    """A run stopped after checkpoint-4 and resumed equals the unbroken 8-step run, bit for bit."""
    import shutil

    from safetensors.numpy import load_file

    train_file = small_v2_file(squad_dir, tmp_path / "train.json", questions=120)
    flags = ["--do_train", "--do_eval", "--train_file", str(train_file), "--predict_file",
             str(small_v2_file(squad_dir, tmp_path / "dev.json", questions=40)), "--max_steps", "8",
             "--save_steps", "4", "--gradient_accumulation_steps", "2", "--warmup_steps", "2"]
    unbroken = tmp_path / "unbroken"
    assert run_squad.main([*common_flags(tiny_bert_dir, unbroken), *flags]) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # What a run killed after its first checkpoint leaves behind (the run is deterministic).
    shutil.copytree(unbroken / "checkpoint-4", resumed / "checkpoint-4")
    assert run_squad.main([*common_flags(tiny_bert_dir, resumed), *flags, "--resume_from_checkpoint", "latest"]) == 0
    a, b = load_file(unbroken / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    assert (unbroken / "predictions_8.json").read_text() == (resumed / "predictions_8.json").read_text()
