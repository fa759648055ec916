#!/usr/bin/env python
"""Turn a sweep's output folders into one table: the flags that differ between runs, then EM, F1, best F1
and its threshold of each run's final evaluation, best first.

    python scripts/sweep_table.py runs/sweep/* [--format markdown|csv] [--output FILE]

Each folder is a run_squad.py --output_dir: its training_args.json holds the run's flags (the micro-batch
sizes it really used), eval_results.json every evaluation by step, training_state.json the step of the final
model (whose evaluation is the run's result; without it the highest step). A folder that is not such a run is
one line on stderr naming it, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for atomic_io

from squad_internals import atomic_io  # noqa: E402

# Flags that differ between runs by construction, or that do not change the result.
IGNORED = {"output_dir", "overwrite_output_dir", "overwrite_cache", "features_cache_dir", "logging_steps",
           "save_steps", "save_total_limit", "verbose_logging", "resume_from_checkpoint", "local_rank", "threads",
           "server_ip", "server_port", "cache_dir", "eval_all_checkpoints",
           "train_file_sha256", "tokenizer_sha256"}  # what a resume compares: train_path and the flags show it
SCORES = ("EM", "F1", "best F1", "threshold")


class SweepError(Exception):
    """A folder that is not a finished run (one line: the folder and what is missing)."""


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SweepError(f"{path.parent}: no {path.name} (not a finished run_squad.py output folder)") from exc
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(value, dict):
        raise SweepError(f"{path}: expected a JSON object")
    return value


def final_evaluation(folder: Path) -> dict:
    """The evaluation of the final model: the step in training_state.json, else the highest step."""
    results = read_json(folder / "eval_results.json")
    if not results:
        raise SweepError(f"{folder / 'eval_results.json'}: no evaluation in it")
    state = folder / "training_state.json"
    step = str(read_json(state).get("global_step")) if state.is_file() else None
    if step not in results:
        step = max(results, key=lambda k: (k.isdigit(), int(k) if k.isdigit() else 0, k))
    return results[step]


def run_row(folder: Path) -> tuple[dict, dict]:
    """(flags, scores) of one run."""
    if not folder.is_dir():
        raise SweepError(f"{folder}: no such folder")
    evaluation = final_evaluation(folder)
    args = folder / "training_args.json"
    flags = read_json(args) if args.is_file() else {}
    em = evaluation.get("exact", evaluation.get("exact_match"))
    scores = {"EM": em, "F1": evaluation.get("f1"), "best F1": evaluation.get("best_f1"),
              "threshold": evaluation.get("best_f1_thresh")}
    return flags, scores


def differing_flags(all_flags: list[dict]) -> list[str]:
    """The flags whose values are not the same in every run, in the order of the first run that has them."""
    names = list(dict.fromkeys(name for flags in all_flags for name in flags))
    return [name for name in names if name not in IGNORED
            and len({json.dumps(flags.get(name), sort_keys=True) for flags in all_flags}) > 1]


def table(folders: list[Path]) -> tuple[list[str], list[list]]:
    """Header and rows, best first (best F1, else F1)."""
    runs = [(folder, *run_row(folder)) for folder in folders]
    columns = differing_flags([flags for _, flags, _ in runs])
    if not any(scores["best F1"] is not None for _, _, scores in runs):
        score_names = ["EM", "F1"]
    else:
        score_names = list(SCORES)
    rows = [[folder.name, *(flag(flags.get(name)) for name in columns), *(scores[s] for s in score_names)]
            for folder, flags, scores in runs]
    key = score_names.index("best F1") if "best F1" in score_names else score_names.index("F1")
    rows.sort(key=lambda row: -(row[1 + len(columns) + key] or 0.0))
    return ["run", *columns, *score_names], rows


def flag(value) -> str:
    """A flag's value as it would be typed (5e-05, 16, True); "" where a run did not record it."""
    return "" if value is None else str(value)


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"  # only scores are floats by now: flags became text in flag()
    return "" if value is None else str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run_squad.py output folders of the sweep")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--output", "-o", type=Path, help="write the table here (default: standard output)")
    opts = parser.parse_args(argv)
    # A shell glob over a sweep folder also matches the files beside the runs (the sweep's own sweep.md,
    # logs): those are named and left out; a path that does not exist stays an error (a typo).
    folders = [path for path in opts.folders if not path.is_file()]
    for path in sorted(set(opts.folders) - set(folders)):
        print(f"skipped {path}: a file, not a run folder", file=sys.stderr)
    try:
        if not folders:
            raise SweepError("no run folders among the paths given")
        header, rows = table(folders)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(header, rows) if opts.format == "markdown" else csv_text(header, rows)
    if opts.output:
        atomic_io.write_text_atomic(opts.output, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
