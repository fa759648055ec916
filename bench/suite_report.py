"""Turns bench/gpu_suite.sh's summary (one JSON line per measurement) into gpu_suite.json and gpu_suite.md: every
number with the measurement it comes from, the ratios within the run, and the issue's targets checked.

    python bench/suite_report.py OUT/summary.jsonl OUT
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from squad_internals import atomic_io  # noqa: E402

# (what, measurement, loop, key, at least): the targets of the speed issue (#17), through run_squad on one H100/H200.
TARGETS = [
    ("BERT-large default >= 2x Trainer-style", "train_large", "default", "vs_trainer", 2.0),
    ("BERT-large fastest >= 1,000 seq/s", "train_large_fastest", "fastest", "seq_per_s", 1000.0),
    ("BERT-large fastest >= 40% of the bf16 matmul rate", "train_large_fastest", "fastest", "utilization", 0.40),
    ("BERT-base fastest >= 3,000 seq/s", "train_base", "fastest", "seq_per_s", 3000.0),
    ("MiniLM-L6 shape fastest >= 8,000 seq/s", "train_small", "fastest", "seq_per_s", 8000.0),
    ("BERT-large evaluation >= 4,000 seq/s", "eval_large", "default", "seq_per_s", 4000.0),
]


def load(summary: Path) -> dict:
    runs = {}
    for line in summary.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            runs[record["name"]] = record
    return runs


def loop_result(runs: dict, name: str, loop: str) -> dict:
    record = runs.get(name, {})
    found = next((r for r in record.get("results", []) if r["loop"] == loop), None)
    if found is None:
        return {}
    trainer = next((r for r in record.get("results", []) if r["loop"] == "trainer"), None)
    if trainer:
        found = {**found, "vs_trainer": found["seq_per_s"] / trainer["seq_per_s"]}
    return found


def check_targets(runs: dict) -> list[dict]:
    checked = []
    for what, name, loop, key, minimum in TARGETS:
        value = loop_result(runs, name, loop).get(key)
        checked.append({"target": what, "value": value, "met": None if value is None else value >= minimum})
    classic = loop_result(runs, "train_large", "classic").get("peak_mem_gib")
    for loop, name in (("default", "train_large"), ("fastest", "train_large_fastest")):
        peak = loop_result(runs, name, loop).get("peak_mem_gib")
        checked.append({"target": f"BERT-large {loop} peak memory <= classic ({classic} GiB)", "value": peak,
                        "met": None if peak is None or classic is None else peak <= classic})
    cli = [r for r in runs.values() if r.get("kind") == "cli"]
    skipped = [r["skipped_updates"] for r in cli if r.get("rc") == 0]
    checked.append({"target": "zero skipped updates end to end", "value": skipped,
                    "met": None if not skipped else not any(skipped)})
    return checked


def throughput_table(runs: dict) -> list[str]:
    lines = ["| measurement | loop | seq/s | vs classic | vs Trainer-style | util | peak GiB | compile s | path |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, record in runs.items():
        results = record.get("results") or []
        classic = next((r for r in results if r["loop"] == "classic"), None)
        trainer = next((r for r in results if r["loop"] == "trainer"), None)
        for r in results:
            ratio = f"{r['seq_per_s'] / classic['seq_per_s']:.2f}x" if classic else "-"
            versus = f"{r['seq_per_s'] / trainer['seq_per_s']:.2f}x" if trainer else "-"
            peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
            compiled = f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else "-"
            lines.append(f"| {name} ({record.get('config')}) | {r['loop']} | {r['seq_per_s']:.0f} | {ratio} | {versus} | "
                         f"{r['utilization']:.1%} | {peak} | {compiled} | {r.get('path', '').removeprefix('path: ')} |")
    return lines


def number(record: dict, key: str, fmt: str) -> str:
    return format(record[key], fmt) if record.get(key) is not None else "-"


def cli_table(runs: dict) -> list[str]:
    lines = ["| run | flags beyond the seed script's | wall s | training seq/s | F1 | best F1 | skipped | path |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in runs.values() if r.get("kind") == "cli"):
        lines.append(f"| {r['name']} (rc {r['rc']}) | {r['flags'] or '(none)'} | {r['wall_s']:.0f} | "
                     f"{number(r, 'train_seq_per_s', '.0f')} | {number(r, 'f1', '.2f')} | {number(r, 'best_f1', '.2f')} | "
                     f"{r['skipped_updates']} | {(r.get('path') or '-').removeprefix('path: ')} |")
    return lines


def main(argv=None) -> int:
    summary, out = (Path(a) for a in (argv or sys.argv[1:]))
    runs = load(summary)
    env = (out / "env.txt").read_text().strip() if (out / "env.txt").is_file() else ""
    gpu = next((r.get("gpu") for r in runs.values() if r.get("gpu")), None)
    report = {"date": datetime.date.today().isoformat(), "gpu": gpu, "environment": env,
              "command": "bash bench/gpu_suite.sh", "targets": check_targets(runs), "runs": runs}
    lines = [f"# GPU suite, {report['date']}: {gpu or 'no GPU (dry run)'}", "", f"`{env}`", "",
             "## The command line end to end (MiniLM, shared SQuAD 2.0 sample, dev-v2.0.json)", "", *cli_table(runs), "",
             "## Throughput (random weights, SQuAD feature lengths, batch 32, 384)", "", *throughput_table(runs), "",
             "## Targets", "", "| target | value | met |", "|---|---|---|"]
    for t in report["targets"]:
        value = t["value"] if not isinstance(t["value"], float) else round(t["value"], 3)
        lines.append(f"| {t['target']} | {value} | {t['met']} |")
    demo = runs.get("demo")
    if demo:
        lines += ["", f"The demo (`bash scripts/demo.sh`, set up): {demo['wall_s']} s, exit code {demo['rc']}"]
    oom = runs.get("oom")
    if oom:
        lines += ["", f"Forced out-of-memory: exit code {oom['rc']}, `{oom['line']}`"]
    atomic_io.write_json_atomic(out / "gpu_suite.json", report, indent=2)
    atomic_io.write_text_atomic(out / "gpu_suite.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
