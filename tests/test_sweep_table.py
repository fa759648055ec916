"""scripts/sweep_table.py: a sweep's output folders -> one table of the differing flags and the scores."""

import json
import subprocess
import sys
from pathlib import Path

import run_squad
from cli_helpers import REPO, common_flags, small_v2_file

SCRIPT = REPO / "scripts" / "sweep_table.py"


def fake_run(folder: Path, flags: dict, results: dict, final_step: int | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "training_args.json").write_text(json.dumps({"output_dir": str(folder), "seed": 42, **flags}))
    (folder / "eval_results.json").write_text(json.dumps(results))
    if final_step is not None:
        (folder / "training_state.json").write_text(json.dumps({"global_step": final_step}))
    return folder


def scores(f1: float, best: float, thresh: float) -> dict:
    return {"exact": f1 - 5, "f1": f1, "total": 10, "best_exact": best - 5, "best_exact_thresh": thresh,
            "best_f1": best, "best_f1_thresh": thresh}


def sweep(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, **kwargs)


def test_the_table_has_the_differing_flags_and_the_final_scores_best_first(tmp_path):
    a = fake_run(tmp_path / "a", {"learning_rate": 3e-5, "per_gpu_train_batch_size": 16},
                 {"100": scores(70.0, 71.0, -1.5), "200": scores(75.0, 76.5, -0.25)}, final_step=200)
    b = fake_run(tmp_path / "b", {"learning_rate": 5e-5, "per_gpu_train_batch_size": 16},
                 {"200": scores(78.0, 79.0, 0.5), "100": scores(10.0, 90.0, 9.0)}, final_step=None)
    done = sweep([a, b])
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("| run | learning_rate | EM | F1 | best F1 | threshold |\n"
                           "|---|---|---|---|---|---|\n"
                           "| b | 5e-05 | 73.00 | 78.00 | 79.00 | 0.50 |\n"
                           "| a | 3e-05 | 70.00 | 75.00 | 76.50 | -0.25 |\n")
    out = tmp_path / "sweep.csv"
    assert sweep([a, b, "--format", "csv", "--output", out]).returncode == 0
    assert out.read_text().splitlines() == ["run,learning_rate,EM,F1,best F1,threshold",
                                            "b,5e-05,73.0,78.0,79.0,0.5", "a,3e-05,70.0,75.0,76.5,-0.25"]


def test_squad1_runs_get_em_and_f1_only(tmp_path):
    a = fake_run(tmp_path / "a", {"num_train_epochs": 2.0}, {"9": {"exact_match": 80.0, "f1": 88.5}}, 9)
    b = fake_run(tmp_path / "b", {"num_train_epochs": 3.0}, {"9": {"exact_match": 81.0, "f1": 88.0}}, 9)
    assert sweep([a, b]).stdout.splitlines() == ["| run | num_train_epochs | EM | F1 |", "|---|---|---|---|",
                                                 "| a | 2.0 | 80.00 | 88.50 |", "| b | 3.0 | 81.00 | 88.00 |"]


def test_files_a_glob_matches_beside_the_runs_are_named_and_left_out(tmp_path):
    a = fake_run(tmp_path / "a", {"seed": 1}, {"9": {"exact_match": 80.0, "f1": 88.5}}, 9)
    b = fake_run(tmp_path / "b", {"seed": 2}, {"9": {"exact_match": 81.0, "f1": 88.0}}, 9)
    (tmp_path / "a.log").write_text("training...\n")
    (tmp_path / "sweep.md").write_text("| old table |\n")
    done = sweep(sorted(tmp_path.iterdir()))
    assert done.returncode == 0 and done.stdout.splitlines()[2:] == ["| a | 1 | 80.00 | 88.50 |", "| b | 2 | 81.00 | 88.00 |"]
    assert done.stderr.splitlines() == [f"skipped {tmp_path / name}: a file, not a run folder" for name in ("a.log", "sweep.md")]
    only_files = sweep([tmp_path / "a.log"])
    assert (only_files.returncode, only_files.stderr.splitlines()[-1]) == (2, "error: no run folders among the paths given")
    assert (a / "eval_results.json").is_file() and (b / "eval_results.json").is_file()


def test_a_folder_that_is_not_a_finished_run_is_one_line_and_nothing_is_written(tmp_path):
    good = fake_run(tmp_path / "good", {}, {"1": scores(1.0, 2.0, 0.0)}, 1)
    (tmp_path / "unfinished").mkdir()
    out = tmp_path / "table.md"
    for bad, message in ((tmp_path / "missing", f"error: {tmp_path / 'missing'}: no such folder\n"),
                         (tmp_path / "unfinished", f"error: {tmp_path / 'unfinished'}: no eval_results.json "
                                                   "(not a finished run_squad.py output folder)\n")):
        done = sweep([good, bad, "--output", out])
        assert (done.returncode, done.stderr, done.stdout) == (2, message, "")
        assert not out.exists()


def test_real_runs_of_the_command_line(tiny_bert_dir, squad_dir, tmp_path):
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=40)
    folders = []
    for lr in ("1e-3", "5e-3"):
        out = tmp_path / f"lr{lr}"
        assert run_squad.main([*common_flags(tiny_bert_dir, out), "--do_train", "--do_eval", "--train_file", str(train),
                               "--predict_file", str(train), "--max_steps", "2", "--save_steps", "0",
                               "--learning_rate", lr]) == 0
        folders.append(out)
    done = sweep(folders)
    assert done.returncode == 0, done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header == "| run | learning_rate | EM | F1 | best F1 | threshold |"
    assert sorted(row.split(" | ")[1] for row in rows) == ["0.001", "0.005"]
