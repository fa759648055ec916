"""Helpers shared by the tests that run run_squad.py end to end, and the faults they inject."""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_TRAIN = REPO / "scripts" / "demo_data" / "demo-train-v2.0.json"
DEMO_DEV = REPO / "scripts" / "demo_data" / "demo-dev-v2.0.json"


def small_v2_file(squad_dir: Path, target: Path, articles: int = 1, questions: int = 60) -> Path:
    """The first questions of the real sample: a run of a few seconds that still crosses windows."""
    return small_squad_file(squad_dir / "train-v2.0.json", target, articles, questions)


def small_squad_file(source: Path, target: Path, articles: int = 1, questions: int = 60) -> Path:
    """The first questions of the first articles of a SQuAD file, in the same format."""
    data = json.loads(source.read_text())
    kept, left = [], questions
    for article in data["data"][:articles]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if left <= 0:
                break
            qas = paragraph["qas"][:left]
            left -= len(qas)
            paragraphs.append({**paragraph, "qas": qas})
        kept.append({**article, "paragraphs": paragraphs})
    target.write_text(json.dumps({"version": data.get("version", "v2.0"), "data": kept}))
    return target


def common_flags(model: Path, out: Path, precision: str | None = "--fp32") -> list[str]:
    """A small run's flags; in fp32 unless told (None: no precision flag). A CPU with native bf16 would default
    to bf16 autocast, and the tests compare exact numbers: the same on every CPU."""
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--version_2_with_negative",
            "--no_cuda", "--max_seq_length", "192", "--doc_stride", "64", "--per_gpu_train_batch_size", "8",
            "--per_gpu_eval_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "5", "--seed", "7",
            *([precision] if precision else [])]


def cli_env(**env) -> dict:
    """The environment of a run_squad.py subprocess: one thread (the tests share 2 cores), quiet tokenizers."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}


def run_cli(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_squad.py"), *args], capture_output=True, text=True,
                          env=cli_env(**env), timeout=600)


def question_ids(path: Path) -> set[str]:
    data = json.loads(path.read_text())
    return {qa["id"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_torch(folder: Path) -> dict:
    """An environment in which `import torch` and `import transformers` fail (shadowing packages first on the
    path): what must answer there, answers without them."""
    for name in ("torch", "transformers"):
        package = folder / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(f"raise ImportError('{name} made unimportable by the test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


class FullDiskAfterHalf:
    """A file whose first write stores half of its data and then fails as a full disk does."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
