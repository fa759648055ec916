"""run_squad.py's command line: classic flags, bad combinations, exit codes."""

import json
import shlex
import subprocess
import sys
import time

import pytest

import run_squad
from cli_helpers import REPO, without_torch
from squad_internals import batching, cli, fast_path, output_folder, process_group, qa_model, training_state

# The classic script's 45 flags, each with a value where it takes one.
CLASSIC_COMMAND = """
--model_type bert --model_name_or_path m --output_dir out --data_dir d --train_file t.json
--predict_file p.json --config_name c --tokenizer_name tok --cache_dir cache --version_2_with_negative
--null_score_diff_threshold -1.5 --max_seq_length 384 --doc_stride 128 --max_query_length 64 --do_train
--do_eval --evaluate_during_training --do_lower_case --per_gpu_train_batch_size 12
--per_gpu_eval_batch_size 16 --learning_rate 3e-5 --gradient_accumulation_steps 2 --weight_decay 0.01
--adam_epsilon 1e-6 --max_grad_norm 1.0 --num_train_epochs 2.0 --max_steps -1 --warmup_steps 10
--n_best_size 20 --max_answer_length 30 --verbose_logging --lang_id 0 --logging_steps 50 --save_steps 500
--eval_all_checkpoints --no_cuda --overwrite_output_dir --overwrite_cache --seed 42 --local_rank -1
--fp16 --fp16_opt_level O2 --server_ip '' --server_port '' --threads 4
"""


def test_every_classic_flag_keeps_its_name_and_value():
    args = cli.parse_args(shlex.split(CLASSIC_COMMAND))
    assert args.model_type == "bert"
    assert args.per_gpu_train_batch_size == 12
    assert args.per_gpu_eval_batch_size == 16
    assert args.learning_rate == 3e-5
    assert args.null_score_diff_threshold == -1.5
    assert args.num_train_epochs == 2.0
    assert args.fp16 and args.fp16_opt_level == "O2"
    assert args.version_2_with_negative and args.do_lower_case and args.eval_all_checkpoints
    assert args.threads == 4 and args.local_rank == -1


def test_classic_defaults():
    args = cli.parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--do_eval",
                           "--predict_file", "p.json"])
    assert (args.max_seq_length, args.doc_stride, args.max_query_length) == (384, 128, 64)
    assert (args.per_gpu_train_batch_size, args.learning_rate, args.num_train_epochs) == (8, 5e-5, 3.0)
    assert (args.n_best_size, args.max_answer_length, args.null_score_diff_threshold) == (20, 30, 0.0)
    assert (args.adam_epsilon, args.max_grad_norm, args.weight_decay) == (1e-8, 1.0, 0.0)
    assert (args.logging_steps, args.save_steps, args.seed, args.warmup_steps) == (500, 500, 42, 0)


@pytest.mark.parametrize("flag, grouped", [([], True), (["--length_grouping", "off"], False)])
def test_length_grouping_reaches_the_padded_batches(flag, grouped):
    args = cli.parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--do_eval",
                           "--predict_file", "p.json", *flag])
    config = type("Config", (), {"model_type": "bert"})()
    path = fast_path.choose(fast_path.PathFlags.from_args(args), fast_path.Facts(cuda=False, bf16_gpu=False, model_type="bert"))
    setup = run_squad.RunSetup(None, None, "bert", beam_head=False, context_first=False, source=None, choice=path,
                               config=config, head=batching.SpanHead())
    assert run_squad.make_batching(args, setup, None, 8).grouped is grouped


def test_newer_spellings_are_aliases():
    args = cli.parse_args(shlex.split(
        "--model_name_or_path m --output_dir o --do_train --train_file t.json "
        "--per_device_train_batch_size 6 --per_device_eval_batch_size 7 --local-rank 3 --bf16 --warmup_ratio 0.06"))
    assert args.per_gpu_train_batch_size == 6 and args.per_gpu_eval_batch_size == 7
    assert args.local_rank == 3 and args.bf16 and args.warmup_ratio == 0.06


BASE = "--model_name_or_path m --output_dir o "
BAD_COMBINATIONS = [
    (BASE + "--do_train --train_file t --fp16 --bf16", "--fp16 and --bf16 are mutually exclusive"),
    (BASE + "--do_train", "--do_train needs --train_file"),
    (BASE + "--do_eval", "--do_eval/--do_predict need --predict_file"),
    (BASE, "nothing to do"),
    ("--output_dir o --do_eval --predict_file p", "--model_name_or_path is required"),
    ("--model_name_or_path m --do_eval --predict_file p", "--output_dir is required"),
    (BASE + "--do_eval --predict_file p --doc_stride 0", "--doc_stride must be at least 1"),
    (BASE + "--do_train --train_file t --gradient_accumulation_steps 0", "--gradient_accumulation_steps must be at least 1"),
    (BASE + "--do_train --train_file t --warmup_ratio 1.5", "--warmup_ratio must be in [0, 1)"),
    (BASE + "--do_train --train_file t --layerwise_lr_decay 0", "--layerwise_lr_decay must be in (0, 1]"),
    (BASE + "--do_eval --predict_file p --do_predict", "pass one of them"),
    (BASE + "--do_eval --predict_file p --resume_from_checkpoint latest", "only makes sense with --do_train"),
    (BASE + "--do_eval --predict_file p --no_such_flag", "unrecognized arguments: --no_such_flag"),
    (BASE + "--do_eval --predict_file p --max_seq_length abc", "invalid int value: 'abc'"),
    (BASE + "--do_train --train_file t --lr_scheduler_type steps", "invalid choice: 'steps'"),
    (BASE + "--do_train --train_file t --packing --pack_tokens 100",
     "--pack_tokens (100) must hold a whole feature: at least --max_seq_length (384)"),
    (BASE + "--do_train --train_file t --packing --pack_tokens 4096 --auto_find_batch_size",
     "--auto_find_batch_size sizes packs through --per_gpu_train_batch_size: drop --pack_tokens"),
    (BASE + "--do_train --train_file t --evaluate_during_training",
     "--evaluate_during_training needs --predict_file"),
    (BASE + "--do_train --train_file t --lr_scheduler_type polynomial --learning_rate 1e-5 --lr_end 1e-5",
     "--lr_end (1e-05) must be below --learning_rate (1e-05)"),
]


@pytest.mark.parametrize("command,message", BAD_COMBINATIONS)
def test_bad_flags_give_one_line_and_exit_2(command, message, capsys):
    code = run_squad.main(shlex.split(command))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_bad_flags_and_missing_files_answer_without_torch(tmp_path):
    """The command line is checked before torch is imported: with torch unimportable, the errors still come."""
    env = without_torch(tmp_path / "shadow")
    missing = tmp_path / "missing.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "run_squad.py"), "--model_name_or_path", "m", "--output_dir",
                           str(tmp_path / "o"), "--do_train", "--train_file", str(missing)],
                          capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - started
    assert (done.returncode, done.stderr) == (2, f"error: --train_file {missing}: no such file\n")
    done = subprocess.run([sys.executable, str(REPO / "run_squad.py"), "--model_name_or_path", "m", "--output_dir",
                           "o", "--do_train"], capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (2, "error: --do_train needs --train_file (or --dataset_name)\n")
    print(f"missing --train_file reported in {seconds:.2f} s")  # measured, not asserted (CI machines vary)


def test_help_leads_with_the_usage_and_an_example_and_shows_defaults():
    text = cli.build_parser().format_help()
    first_screen = "\n".join(text.splitlines()[:25])
    assert "--model_name_or_path MODEL --output_dir DIR (--do_train | --do_eval | --do_predict)" in first_screen
    assert "python run_squad.py --model_type bert --model_name_or_path bert-base-uncased" in first_screen
    flat = " ".join(text.split())
    assert "input length after tokenization. (default: 384)" in flat and "AdamW. (default: 5e-05)" in flat
    groups = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert groups[-8:] == ["model", "data", "what to run", "optimization", "speed", "decoding",
                           "checkpoints and logs", "devices and processes"]
    checkpoints_group = text[text.index("checkpoints and logs:"):text.index("devices and processes:")]
    decoding_group = text[text.index("decoding:"):text.index("checkpoints and logs:")]
    assert "--output_dir" in checkpoints_group and "--null_score_diff_threshold" in decoding_group


def test_missing_files_are_reported_before_any_model_is_loaded(tmp_path, capsys):
    code = run_squad.main(["--model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "o"),
                           "--do_eval", "--predict_file", str(tmp_path / "missing.json")])
    assert code == 2
    assert f"--predict_file {tmp_path / 'missing.json'}: no such file" in capsys.readouterr().err


def test_model_type_must_agree_with_config(tmp_path, capsys, tiny_bert_dir, squad_dir):
    code = run_squad.main(["--model_type", "xlnet", "--model_name_or_path", str(tiny_bert_dir),
                           "--output_dir", str(tmp_path / "o"), "--do_eval", "--version_2_with_negative",
                           "--predict_file", str(squad_dir / "dev-v2.0.json")])
    assert code == 2
    assert "--model_type xlnet disagrees with the config" in capsys.readouterr().err


def test_training_refuses_a_non_empty_output_dir(tmp_path, capsys, tiny_bert_dir, squad_dir):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = run_squad.main(["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(out), "--do_train",
                           "--version_2_with_negative", "--train_file", str(squad_dir / "train-v2.0.json")])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_parameter_depths_for_layerwise_decay():
    assert qa_model.parameter_depth("bert.embeddings.word_embeddings.weight", 12) == 0
    assert qa_model.parameter_depth("bert.encoder.layer.0.attention.self.query.weight", 12) == 1
    assert qa_model.parameter_depth("roberta.encoder.layer.11.output.dense.bias", 12) == 12
    assert qa_model.parameter_depth("qa_outputs.weight", 12) == 13


def test_layerwise_lr_groups(tiny_bert_dir):
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir)
    args = cli.parse_args(shlex.split(
        f"--model_name_or_path {tiny_bert_dir} --output_dir o --do_train --train_file t "
        "--learning_rate 1e-3 --layerwise_lr_decay 0.5 --weight_decay 0.01"))
    groups = qa_model.parameter_groups(model, args.learning_rate, args.weight_decay, args.layerwise_lr_decay)
    by_name = {n: g for g in groups for n in g["names"]}
    # 2 layers: head at the full rate, layer 1 x0.5, layer 0 x0.25, embeddings x0.125.
    assert by_name["qa_outputs.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["bert.encoder.layer.1.output.dense.weight"]["lr"] == pytest.approx(5e-4)
    assert by_name["bert.encoder.layer.0.output.dense.weight"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["bert.embeddings.word_embeddings.weight"]["lr"] == pytest.approx(1.25e-4)
    assert by_name["bert.encoder.layer.0.output.dense.bias"]["weight_decay"] == 0.0
    assert by_name["bert.embeddings.LayerNorm.weight"]["weight_decay"] == 0.0
    assert by_name["bert.encoder.layer.0.output.dense.weight"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_checkpoints_sort_by_step_as_numbers(tmp_path):
    for step in (100, 20, 3):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / output_folder.TRAINER_STATE).write_bytes(b"")
    (tmp_path / "checkpoint-7").mkdir()  # incomplete: no trainer state, never listed
    assert [p.name for p in output_folder.list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-20", "checkpoint-100"]


def test_save_total_limit_never_lets_an_earlier_runs_later_steps_push_out_this_runs(tmp_path):
    """A folder reused with --overwrite_output_dir still holds checkpoint-21000 and -22000 of an earlier run:
    this run's checkpoint-500 must not be the one deleted for being "oldest"."""
    def make(step):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / output_folder.TRAINER_STATE).write_bytes(b"")

    for step in (21000, 22000, 500):
        make(step)
    output_folder.prune(tmp_path, 2, None, step=500)
    assert [p.name for p in output_folder.list_checkpoints(tmp_path)] == ["checkpoint-500", "checkpoint-21000",
                                                                        "checkpoint-22000"]
    for step in (1000, 1500):
        make(step)
        output_folder.prune(tmp_path, 2, None, step=step)
    assert [p.name for p in output_folder.list_checkpoints(tmp_path)] == ["checkpoint-1000", "checkpoint-1500",
                                                                        "checkpoint-21000", "checkpoint-22000"]


def test_model_type_is_case_insensitive_as_in_the_classic_script():
    args = cli.parse_args(shlex.split(BASE + "--model_type BERT --do_eval --predict_file p"))
    assert args.model_type == "bert"


def test_remote_code_is_off_unless_asked_for():
    assert cli.parse_args(shlex.split(BASE + "--do_eval --predict_file p")).trust_remote_code is False


@pytest.mark.parametrize("nodelist,host", [
    ("gpu[007-010,012],cpu1", "gpu007"), ("node[1-4]", "node1"), ("a01,a02", "a01"), ("single-host", "single-host"),
])
def test_first_slurm_host(nodelist, host):
    assert process_group.first_slurm_host(nodelist) == host


@pytest.mark.parametrize("output_dir", ["/proc/run-squad-test-out", "{file}/out"])
def test_an_unwritable_output_dir_fails_before_any_work(output_dir, tmp_path, capsys, squad_dir):
    (tmp_path / "file").write_text("a file, not a folder")
    out = output_dir.format(file=tmp_path / "file")
    code = run_squad.main(["--model_name_or_path", str(tmp_path / "no-model"), "--output_dir", out,
                           "--do_eval", "--version_2_with_negative", "--predict_file", str(squad_dir / "dev-v2.0.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --output_dir {out}: cannot write there (") and err.count("\n") == 1


def test_evaluation_never_overwrites_predictions_without_the_flag(tmp_path, capsys, tiny_bert_dir, squad_dir):
    out = tmp_path / "o"
    out.mkdir()
    (out / "predictions_final.json").write_text("{}")
    command = ["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(out), "--do_eval",
               "--version_2_with_negative", "--predict_file", str(squad_dir / "dev-v2.0.json")]
    assert run_squad.main(command) == 2
    assert "predictions_final.json exists; pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "predictions_final.json").read_text() == "{}"


def albert_depths(decay):
    from transformers import AlbertConfig, AlbertForQuestionAnswering

    config = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=6, num_hidden_groups=1,
                          num_attention_heads=2, intermediate_size=20)
    args = cli.parse_args(shlex.split(BASE + f"--do_train --train_file t --learning_rate 1 "
                                                   f"--layerwise_lr_decay {decay}"))
    groups = qa_model.parameter_groups(AlbertForQuestionAnswering(config), args.learning_rate, args.weight_decay,
                                       args.layerwise_lr_decay)
    return {n: g["lr"] for g in groups for n in g["names"]}


def test_albert_shared_layers_decay_as_one_stack():
    """6 layers sharing 1 group of weights: head 1, shared layer 0.5, embeddings 0.25 (not 0.5**7)."""
    lr = albert_depths(0.5)
    assert lr["qa_outputs.weight"] == 1.0
    assert lr["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"] == 0.5
    assert lr["albert.encoder.embedding_hidden_mapping_in.weight"] == 0.25
    assert lr["albert.embeddings.word_embeddings.weight"] == 0.25


@pytest.mark.parametrize("name,depth", [
    ("transformer.attentions.1.q_lin.weight", 2),          # XLM
    ("transformer.layer_norm2.0.weight", 1),
    ("transformer.ffns.0.lin1.weight", 1),
    ("transformer.layer_norm_emb.weight", 0),
    ("transformer.lang_embeddings.weight", 0),
    ("transformer.mask_emb", 0),                            # XLNet
    ("transformer.word_embedding.weight", 0),
    ("transformer.layer.1.ff.layer_1.weight", 2),
    ("deberta.encoder.rel_embeddings.weight", 0),           # DeBERTa-v2 relative table and its norm
    ("deberta.encoder.LayerNorm.weight", 0),
    ("deberta.encoder.layer.0.attention.output.LayerNorm.weight", 1),
    ("electra.embeddings_project.weight", 0),
    ("distilbert.transformer.layer.1.ffn.lin2.weight", 2),
    ("bert.encoder.layer.0.attention.self.distance_embedding.weight", 1),
    ("start_logits.dense.weight", 3),                       # beam head
])
def test_parameter_depths_of_every_family(name, depth):
    assert qa_model.parameter_depth(name, 2) == depth


@pytest.mark.parametrize("name,decays", [
    ("bert.encoder.layer.0.output.dense.weight", True), ("bert.encoder.layer.0.output.dense.bias", False),
    ("bert.embeddings.LayerNorm.weight", False), ("transformer.layer_norm1.0.weight", False),
    ("transformer.layer.0.rel_attn.layer_norm.weight", False), ("transformer.layer_norm_emb.weight", False),
])
def test_no_weight_decay_on_biases_and_every_norm(name, decays):
    assert qa_model.decays_weight(name) is decays


def test_parameter_groups_are_one_line_and_each_group_under_verbose_logging(tiny_bert_dir, caplog):
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir)

    def logged(flags, level):
        args = cli.parse_args(shlex.split(f"--model_name_or_path {tiny_bert_dir} --output_dir o --do_train "
                                          f"--train_file t --learning_rate 1e-3 {flags}"))
        caplog.clear()
        with caplog.at_level(level, logger="run_squad"):
            optimizer = training_state.build_optimizer(model, training_state.OptimConfig.from_flags(args))
        return optimizer, [(r.levelname, r.getMessage()) for r in caplog.records if "parameter group" in r.getMessage()]

    # The tiny BERT: 2 layers, so depths 0 (embeddings) to 3 (the head), each with and without decay.
    optimizer, lines = logged("--layerwise_lr_decay 0.5 --weight_decay 0.01", "INFO")
    tensors = sum(len(g["params"]) for g in optimizer.param_groups)
    decayed = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"])
    assert len(optimizer.param_groups) == 8 and 0 < decayed < tensors
    assert lines == [("INFO", f"8 parameter groups of {tensors} tensors: lr 0.000125 to 0.001 (layer-wise decay 0.5), "
                              f"weight decay 0.01 on {decayed} tensors, none on biases and norms")]
    _, lines = logged("--layerwise_lr_decay 0.5 --weight_decay 0.01", "DEBUG")
    assert len(lines) == 9 and {level for level, _ in lines[1:]} == {"DEBUG"}
    assert lines[1][1] == ("parameter group (depth 0): lr 0.000125, weight decay 0.01, 3 tensors, "
                           "e.g. bert.embeddings.word_embeddings.weight")
    assert any(line.startswith("parameter group (depth 3): lr 0.001,") for _, line in lines)
    # Without layer-wise decay or weight decay: one rate, no decay.
    _, lines = logged("", "INFO")
    assert lines == [("INFO", f"2 parameter groups of {tensors} tensors: lr 0.001, no weight decay")]


def test_sequence_lengths_are_checked_with_the_tokenizers_own_special_tokens(tmp_path, tmp_path_factory, capsys,
                                                                            tiny_bert_dir, squad_dir):
    """One check, after the tokenizer is loaded: BERT has 3 special tokens in a pair, RoBERTa 4, so 68 / 64
    passes for BERT and is a usage error (exit 2, one line, before any feature) for RoBERTa."""
    from tiny_models import tiny_model_dir

    def run(model, seq, query):
        return run_squad.main(["--model_name_or_path", str(model), "--output_dir", str(tmp_path / f"o{seq}"),
                               "--do_eval", "--version_2_with_negative", "--predict_file",
                               str(squad_dir / "dev-v2.0.json"), "--max_seq_length", str(seq),
                               "--max_query_length", str(query), "--no_cuda"])

    assert run(tiny_bert_dir, 64, 64) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: --max_seq_length (64) must be larger than --max_query_length (64) + 3 "
                                    "special tokens of this tokenizer")
    assert run(tiny_model_dir("roberta", tmp_path_factory), 68, 64) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: --max_seq_length (68) must be larger than --max_query_length (64) + 4 "
                                    "special tokens of this tokenizer")
    assert "features" not in err, "refused before featurization"


def test_an_unreadable_eval_results_file_is_kept_aside_not_dropped(tmp_path):
    (tmp_path / "eval_results.json").write_text('{"6": {"exact": 1.0}')  # cut short by a full disk
    output_folder.write_eval_results(tmp_path, "12", {"exact": 50.0})
    kept = list(tmp_path.glob("eval_results.unreadable-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == '{"6": {"exact": 1.0}'
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"12": {"exact": 50.0}}
