"""An automatic choice of the fast path that cannot run falls back with one warning and the run finishes with the
model the safer path trains from the start; an explicit request that cannot run is one line, exit 2, nothing left.
Each failure is injected on the CPU: a compile backend that raises, a C++ compiler that does not work, a packed
attention that raises, a precision that cannot run, and one rank of two whose compilation fails."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import run_squad
from cli_helpers import REPO, cli_env, common_flags, free_port, run_cli, small_v2_file
from squad_internals import fast_path, packing, path_fallback

RAISING = "test_raising_backend"
WIDE = ["--max_seq_length", "384", "--doc_stride", "128"]  # batches of several widths (rounded to 64 compiled)
SECOND_SHAPE_RAISES = "test_second_shape_raises"
PASSTHROUGH = "test_passthrough"


@pytest.fixture(scope="module", autouse=True)
def test_backends():
    """Three torch.compile backends: one that always raises, one that runs the captured graph as it is (the same
    arithmetic and random draws as eager), and one that does so until asked to compile a second input shape,
    which it refuses."""
    shapes: set = set()

    def raising(gm, example_inputs):
        raise RuntimeError("the test backend refuses to compile")

    def second_shape_raises(gm, example_inputs):
        widths = {tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 2
                  and not t.is_floating_point() and t.shape[0] > 1}  # the batch's ids, not a position buffer
        shapes.update(widths)
        if len(shapes) > 1:
            raise RuntimeError(f"the test backend refuses a second shape {sorted(shapes)}")
        return gm.forward

    torch._dynamo.register_backend(raising, RAISING)
    torch._dynamo.register_backend(lambda gm, example_inputs: gm.forward, PASSTHROUGH)
    torch._dynamo.register_backend(second_shape_raises, SECOND_SHAPE_RAISES)
    yield shapes


def train_flags(squad_dir: Path, tmp_path: Path, steps: int = 6) -> list[str]:
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=120)
    return ["--do_train", "--train_file", str(train), "--max_steps", str(steps), "--save_steps", "0",
            "--logging_steps", "1000"]


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if " WARNING " in line and "going on with" in line]


def refused(command: list[str], out: Path, capsys) -> tuple[str, str]:
    """run_squad.main refusing `command`: exit 2 and nothing left at `out`. Its stderr and last line."""
    code = run_squad.main(command)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    return err, err.strip().splitlines()[-1]


@pytest.fixture
def compile_automatically(monkeypatch):
    """The automatic rule compiles this CPU run (it does only for long GPU runs of big models)."""
    monkeypatch.setattr(fast_path, "needs_run_length", lambda flag, cuda, training: flag == "auto" and training)
    monkeypatch.setattr(fast_path, "compile_pays", lambda parameters, steps: True)


@pytest.fixture
def pack_automatically(monkeypatch):
    """The automatic rule packs this CPU run (it does only on GPUs with flash attention's varlen kernel)."""
    real = fast_path.choose_packing

    def choose_packing(flag, facts, precision):
        return (True, "packed batches (automatic, for the test)") if flag == "auto" else real(flag, facts, precision)

    monkeypatch.setattr(fast_path, "choose_packing", choose_packing)


@pytest.fixture
def packed_attention_raises(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no packed kernel for this device (test)")

    monkeypatch.setattr(packing, "_per_segment_sdpa", refuse)
    monkeypatch.setattr(packing, "_block_diagonal_sdpa", refuse)


# --------------------------------------------------------------------------------------------
# The rules: which part is given up, and the words
# --------------------------------------------------------------------------------------------


def test_the_part_given_up_is_compilation_for_its_errors_else_the_first_automatic_one():
    path = fast_path.Choice(True, "bf16", False, (), compile_training=True)
    auto = fast_path.PathFlags()
    assert fast_path.part_to_give_up(path, auto, compile_failure=True) == ("compile", None)
    assert fast_path.part_to_give_up(path, auto, compile_failure=False) == ("packing", None)
    packed_on = fast_path.PathFlags(packing="on")
    assert fast_path.part_to_give_up(path, packed_on, compile_failure=False) == ("precision", None)
    explicit = fast_path.PathFlags(packing="on", bf16=True, torch_compile="on")
    assert fast_path.part_to_give_up(path, explicit, compile_failure=False) == ("packing", "--packing on")
    assert fast_path.part_to_give_up(path, explicit, compile_failure=True) == ("compile", "--torch_compile on")
    padded = fast_path.Choice(False, "fp16", False, ())
    assert fast_path.part_to_give_up(padded, fast_path.PathFlags(fp16=True), False) == ("precision", "--fp16")


def test_safer_flags_give_up_one_part_each():
    flags = fast_path.PathFlags(bf16=True)
    assert flags.safer("precision") == fast_path.PathFlags(fp32=True)
    assert flags.safer("packing").packing == "off" and flags.safer("packing").bf16
    assert flags.safer("compile").torch_compile == "off"


def test_the_warning_and_the_refusal_name_what_failed_and_the_flag():
    assert fast_path.fallback_warning("packing", "RuntimeError: x", "in the first training step") == (
        "packed attention failed in the first training step (RuntimeError: x): going on with padded batches "
        "(--packing off chooses that explicitly)")
    assert fast_path.refusal("compile", "--torch_compile on", "InvalidCxxCompiler: y", "in a probe") == (
        "--torch_compile on: torch.compile failed in a probe (InvalidCxxCompiler: y); --torch_compile off for eager")


def test_the_compile_probe_says_what_failed_and_leaves_the_random_state():
    before = torch.get_rng_state()
    assert path_fallback.compile_problem("aot_eager", None, torch.device("cpu")) is None
    problem = path_fallback.compile_problem(RAISING, None, torch.device("cpu"))
    assert problem == "RuntimeError: the test backend refuses to compile"
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------


def test_an_explicit_compilation_that_cannot_run_is_refused_before_the_data_is_prepared(tiny_bert_dir, squad_dir,
                                                                                         tmp_path, capsys):
    out = tmp_path / "out"
    err, last = refused([*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path), "--torch_compile",
                         "--torch_compile_backend", RAISING], out, capsys)
    assert last == (
        "error: --torch_compile on: torch.compile failed in a probe (RuntimeError: the test backend refuses to "
        "compile); --torch_compile off for eager")
    assert "Traceback" not in err and "features" not in err  # refused before featurizing


def test_a_compiler_that_does_not_work_refuses_an_explicit_compilation(tiny_bert_dir, squad_dir, tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("cc", "gcc", "g++", "c++", "clang", "clang++", "icx", "icpx"):
        stub = stubs / name
        stub.write_text("#!/bin/sh\necho 'stub compiler: it does not work' >&2\nexit 1\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    done = run_cli([*common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path), "--torch_compile"],
                   PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", CXX=str(stubs / "g++"), CC=str(stubs / "gcc"))
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --torch_compile on: torch.compile failed in a probe (")
    assert last.endswith("; --torch_compile off for eager")
    assert "Traceback" not in done.stderr and not out.exists()


def test_an_automatic_compilation_that_cannot_run_trains_eagerly(tiny_bert_dir, squad_dir, tmp_path, capsys,
                                                                compile_automatically):
    runs = {}
    for name, extra in (("eager", ["--torch_compile", "off"]), ("auto", ["--torch_compile_backend", RAISING])):
        runs[name] = tmp_path / name
        assert run_squad.main([*common_flags(tiny_bert_dir, runs[name]), *train_flags(squad_dir, tmp_path),
                               *extra]) == 0
        err = capsys.readouterr().err
    assert warnings_in(err) == [line for line in err.splitlines() if "going on with eager" in line]
    assert len(warnings_in(err)) == 1
    assert warnings_in(err)[0].endswith(
        "torch.compile failed in a probe (RuntimeError: the test backend refuses to compile): going on with eager "
        "(--torch_compile off chooses that explicitly)")
    assert "path taken: padded, fp32, eager" in err
    assert_same_weights(runs["eager"], runs["auto"])


def test_a_compilation_failing_at_a_later_step_goes_on_eagerly_from_that_step(tiny_bert_dir, squad_dir, tmp_path,
                                                                              capsys, compile_automatically,
                                                                              test_backends):
    """The backend compiles the first width and refuses the next one, steps later: the step is computed again
    eagerly, nothing lost or counted twice (every step trained, the same data order and random draws): the model
    equals the one of a backend that compiles every shape as the same arithmetic."""
    runs = {}
    for name in (PASSTHROUGH, SECOND_SHAPE_RAISES):
        test_backends.clear()
        torch._dynamo.reset()  # each run compiles anew (dynamo keeps compiled code per function)
        runs[name] = tmp_path / name
        assert run_squad.main([*common_flags(tiny_bert_dir, runs[name]), *train_flags(squad_dir, tmp_path, 8),
                               *WIDE, "--torch_compile_backend", name]) == 0
        err = capsys.readouterr().err
    assert len(test_backends) == 2  # it compiled one shape and was asked for another
    fell_back = [line for line in err.splitlines() if "training goes on eagerly from this step" in line]
    assert len(fell_back) == 1 and "the compiled step " in fell_back[0]
    step = int(fell_back[0].split("the compiled step ")[1].split()[0])
    assert 1 <= step < 8
    assert "path taken: padded, fp32, compiled; eager since the compiled step" in err
    assert "training done: 8 optimizer steps" in err
    assert_same_weights(runs[PASSTHROUGH], runs[SECOND_SHAPE_RAISES])


# --------------------------------------------------------------------------------------------
# Packing and precision
# --------------------------------------------------------------------------------------------


def test_automatic_packing_that_fails_in_the_first_step_trains_padded_from_the_start(
        tiny_bert_dir, squad_dir, tmp_path, capsys, pack_automatically, packed_attention_raises):
    runs = {}
    for name, extra in (("padded", ["--packing", "off"]), ("auto", [])):
        runs[name] = tmp_path / name
        assert run_squad.main([*common_flags(tiny_bert_dir, runs[name]), *train_flags(squad_dir, tmp_path),
                               *extra]) == 0
        err = capsys.readouterr().err
    assert len(warnings_in(err)) == 1
    assert warnings_in(err)[0].endswith(
        "packed attention failed in the first training step (RuntimeError: no packed kernel for this device "
        "(test)): going on with padded batches (--packing off chooses that explicitly)")
    assert "path taken: padded, fp32, eager; padded batches: packed attention failed in the first step" in err
    assert_same_weights(runs["padded"], runs["auto"])
    assert '"packed": false' in (runs["auto"] / "training_args.json").read_text()


@pytest.mark.parametrize("stage, where", [("train", "the first training step"), ("eval", "evaluation")])
def test_explicit_packing_that_fails_is_one_line(tiny_bert_dir, squad_dir, tmp_path, capsys, packed_attention_raises,
                                                 stage, where):
    out = tmp_path / "out"
    flags = train_flags(squad_dir, tmp_path) if stage == "train" else eval_flags(squad_dir, tmp_path)
    err, last = refused([*common_flags(tiny_bert_dir, out), *flags, "--packing"], out, capsys)
    assert last == (f"error: --packing on: packed attention failed in {where} (RuntimeError: no packed kernel "
                    "for this device (test)); --packing off for padded batches")
    assert "Traceback" not in err


@pytest.fixture
def precision_fails(monkeypatch):
    monkeypatch.setattr(path_fallback, "precision_problem",
                        lambda precision, device: None if precision == "fp32" else "no bf16 here (test)")


def test_an_automatic_precision_that_cannot_run_is_fp32(tiny_bert_dir, squad_dir, tmp_path, capsys, monkeypatch,
                                                       precision_fails):
    real = fast_path.choose_precision

    def bf16_by_default(flags, facts):
        if flags.fp16 or flags.bf16 or flags.fp32:
            return real(flags, facts)
        return "bf16", "bf16 autocast (automatic, for the test)"

    monkeypatch.setattr(fast_path, "choose_precision", bf16_by_default)
    runs = {}
    for name, extra in (("fp32", ["--fp32"]), ("auto", [])):
        runs[name] = tmp_path / name
        assert run_squad.main([*common_flags(tiny_bert_dir, runs[name], precision=None),
                               *train_flags(squad_dir, tmp_path), *extra]) == 0
        err = capsys.readouterr().err
    assert [w.split(": ", 1)[1] for w in warnings_in(err)] == [
        "mixed precision failed in a probe (no bf16 here (test)): going on with fp32 (--fp32 chooses that "
        "explicitly)"]
    assert "path taken: padded, fp32, eager" in err
    assert_same_weights(runs["fp32"], runs["auto"])


def test_an_explicit_precision_that_cannot_run_is_one_line(tiny_bert_dir, squad_dir, tmp_path, capsys,
                                                          precision_fails):
    out = tmp_path / "out"
    _, last = refused([*common_flags(tiny_bert_dir, out, precision="--bf16"), *train_flags(squad_dir, tmp_path)],
                      out, capsys)
    assert last == "error: --bf16: mixed precision failed in a probe (no bf16 here (test)); --fp32 for fp32"


# --------------------------------------------------------------------------------------------
# Two processes agree
# --------------------------------------------------------------------------------------------

DRIVER = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
import run_squad
from squad_internals import fast_path, cli

fast_path.needs_run_length = lambda flag, cuda, training: flag == "auto" and training
fast_path.compile_pays = lambda parameters, steps: True
shapes = set()

def rank1_refuses_a_second_shape(gm, example_inputs):
    # Rank 1 compiles its first shape and refuses the next; rank 0 compiles everything.
    shapes.update(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 2
                  and not t.is_floating_point() and t.shape[0] > 1)
    if os.environ["RANK"] == "1" and len(shapes) > 1:
        raise RuntimeError("rank 1 refuses a second shape")
    return gm.forward

torch._dynamo.register_backend(rank1_refuses_a_second_shape, "rank1_refuses")
sys.exit(run_squad.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_go_on_eagerly_together(tiny_bert_dir, squad_dir, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(driver), *common_flags(tiny_bert_dir, out), *train_flags(squad_dir, tmp_path, 8),
               *WIDE, "--torch_compile_backend", "rank1_refuses"]
    done = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert any("[rank 1]" in line and "the compiled step" in line for line in err.splitlines())
    assert any("[rank 0]" in line and "a compiled step failed on another process" in line
               for line in err.splitlines())
    assert "path taken: padded, fp32, compiled; eager since a compiled step failed on another process" in err
    assert (out / "model.safetensors").exists()


def test_automatic_packing_follows_the_checkpoint_being_resumed():
    """A run that fell back to padded batches resumes padded (its data plan), not refused for a changed path."""
    gpu = dict(cuda=True, bf16_gpu=True, flash_gpu=True, model_type="bert")
    assert fast_path.choose(fast_path.PathFlags(), fast_path.Facts(**gpu)).packing
    resumed = fast_path.choose(fast_path.PathFlags(), fast_path.Facts(**gpu, resumed_packed=False))
    assert not resumed.packing and "as the checkpoint being resumed was trained" in resumed.describe()
    assert fast_path.choose(fast_path.PathFlags(packing="on"), fast_path.Facts(**gpu, resumed_packed=False)).packing
    cpu = fast_path.Facts(cuda=False, bf16_gpu=False, model_type="bert", resumed_packed=True)
    assert fast_path.choose(fast_path.PathFlags(), cpu).packing


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def eval_flags(squad_dir: Path, tmp_path: Path) -> list[str]:
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=30)
    return ["--do_eval", "--predict_file", str(dev)]


def test_automatic_packing_that_fails_in_evaluation_evaluates_padded(tiny_bert_dir, squad_dir, tmp_path, capsys,
                                                                      pack_automatically, packed_attention_raises):
    runs = {}
    for name, extra in (("padded", ["--packing", "off"]), ("auto", [])):
        runs[name] = tmp_path / name
        assert run_squad.main([*common_flags(tiny_bert_dir, runs[name]), *eval_flags(squad_dir, tmp_path),
                               *extra]) == 0
        err = capsys.readouterr().err
    assert [w.split(": ", 1)[1] for w in warnings_in(err)] == [
        "packed attention failed in evaluation (RuntimeError: no packed kernel for this device (test)): going on "
        "with padded batches (--packing off chooses that explicitly)"]
    for name in ("predictions_final.json", "null_odds_final.json", "eval_results.json"):
        assert (runs["auto"] / name).read_bytes() == (runs["padded"] / name).read_bytes(), name


def test_out_of_memory_in_the_first_step_tried_is_the_runs_own_one_line(tiny_bert_dir, squad_dir, tmp_path,
                                                                         monkeypatch, capsys):
    """Out of memory is no reason to give up a part of the path: on a path that is tried first (bf16 here), the
    run ends with the same advice as in training."""
    from test_fast_path import memory_limit

    memory_limit(monkeypatch, rows=4)
    out = tmp_path / "out"
    code = run_squad.main([*common_flags(tiny_bert_dir, out, precision="--bf16"), *train_flags(squad_dir, tmp_path),
                           "--gradient_accumulation_steps", "3"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1] == (
        "error: out of GPU memory at step 1 with --per_gpu_train_batch_size 8 and --max_seq_length 192: keep the "
        "same global batch with --per_gpu_train_batch_size 4 --gradient_accumulation_steps 6, or let "
        "--auto_find_batch_size find it")
    assert "going on with" not in err
