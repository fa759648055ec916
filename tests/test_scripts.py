"""Every seed script's command line is accepted by run_squad.py's parser (dry parsing, nothing runs)."""

import re
import shlex
from pathlib import Path

import pytest

from squad_internals import cli

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "scripts"
# The seed configurations; the others: the demo, the two set-up commands' test runner, the data download,
# and the sweep (tested below).
NOT_SEEDS = ("demo.sh", "test.sh", "download_squad.sh", "sweep_squad2.sh", "setup_env.sh")
SCRIPTS = sorted(p for p in SCRIPT_DIR.glob("*.sh") if p.name not in NOT_SEEDS)


def command_of(script: Path) -> list[str]:
    """The run_squad.py command of a script: backslash continuations joined, variables given values."""
    text = script.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "run_squad.py" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f"{script.name}: expected one run_squad.py command"
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", lines[0])  # ${NPROC:-8} -> 8
    line = line.replace('"$@"', "")
    for name, value in (("SQUAD_DIR", "/data"), ("OUTPUT_DIR", "/out"), ("MODEL", "m"), ("bs", "16"),
                        ("lr", "3e-5"), ("decay", "0.9"), ("out", "/out/run")):
        line = line.replace(f"${name}", value)
    words = shlex.split(line)
    return words[words.index("run_squad.py") + 1:]


def test_there_is_a_script_per_seed_configuration():
    assert len(SCRIPTS) == 9


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_seed_script_flags_parse(script):
    args = cli.parse_args(command_of(script))
    assert args.do_train and args.do_eval
    assert args.train_file.startswith("/data/") and args.predict_file.startswith("/data/")
    assert args.version_2_with_negative == ("squad2" in script.name)


def test_roberta_recipe_flags():
    args = cli.parse_args(command_of(next(p for p in SCRIPTS if p.name == "roberta_large_squad2.sh")))
    assert (args.layerwise_lr_decay, args.lr_scheduler_type, args.adam_beta2, args.adam_epsilon) == (
        0.75, "polynomial", 0.98, 1e-6)
    assert args.context_first and args.warmup_ratio == 0.06


def test_the_sweep_script_runs_each_grid_point_and_tables_them():
    args = cli.parse_args(command_of(SCRIPT_DIR / "sweep_squad2.sh"))
    assert args.do_train and args.do_eval and args.version_2_with_negative
    assert (args.per_gpu_train_batch_size, args.learning_rate, args.layerwise_lr_decay) == (16, 3e-5, 0.9)
    assert args.train_file == "/data/train-v2.0.json" and args.output_dir == "/out/run"
    assert args.resume_from_checkpoint == "latest"  # a rerun after a kill continues the sweep
    assert "scripts/sweep_table.py" in (SCRIPT_DIR / "sweep_squad2.sh").read_text()


def test_the_set_up_refuses_a_python_older_than_3_10_in_one_line(tmp_path):
    """scripts/setup_env.sh (behind the README's two commands) on a machine whose python is too old."""
    import os
    import shutil
    import subprocess

    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT_DIR / "setup_env.sh", tmp_path / "scripts" / "setup_env.sh")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = "-V" ] && { echo "Python 3.9.18"; exit 0; }\nexit 1\n')
    old.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    done = subprocess.run(["bash", "-c", "source scripts/setup_env.sh"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHON": str(old)}, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: Python 3.10 or newer is needed (found: {old}, Python 3.9.18)\n"
    assert not (tmp_path / ".venv").exists()


def test_the_demo_recipe_parses_and_is_the_one_the_readme_measured():
    """scripts/demo.sh's fine-tuning flags (RECIPE=(...), defaults substituted) are accepted by run_squad.py and
    are, word for word, the recipe whose F1 over five seeds and times the README reports."""
    line = next(line for line in (SCRIPT_DIR / "demo.sh").read_text().splitlines() if line.startswith("RECIPE=("))
    recipe = re.sub(r'"?\$\{(\w+):-([^}]*)\}"?', r"\2", line[len("RECIPE=("):line.rindex(")")])
    args = cli.parse_args(shlex.split(recipe) + ["--model_name_or_path", "m", "--output_dir", "o", "--do_train",
                                                 "--train_file", "t.json"])
    assert (args.per_gpu_train_batch_size, args.learning_rate, args.num_train_epochs) == (8, 3e-4, 3.0)
    assert f"`{recipe}`" in (SCRIPT_DIR.parent / "README.md").read_text().replace("\n", " ")
