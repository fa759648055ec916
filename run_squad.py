#!/usr/bin/env python
"""Fine-tune and evaluate transformer encoders for extractive question answering (SQuAD v1.1/v2.0).

The command line of the classic HuggingFace ``run_squad.py`` (same flags, same meaning), rebuilt on
transformers 5. Why a module of its own: it is the command the seed scripts run, and it holds the story of a
run, in the order of this file; everything else has its home in the modules named below.

  check the command line               cli.py, before torch is imported (the block below)
  run: file -> examples -> features    run (input_data.py picks the files; utils_squad.py reads, validates and
                                       featurizes, with a cache)
  train: optimizer steps               train (one loop: micro-batches, step, then log / evaluate / save / stop)
  evaluate: features -> answers        evaluate, infer (decoding.py decodes, squad_metrics.py scores, eval_output.py
                                       writes the scores and files)

A batch goes from features to the model through batching.py (the epoch's plan, padded or packed arrays,
pinned and built ahead, the head's inputs) and back (the head's outputs in the features' layout); fast_path.py
decides the path (packing, precision, compilation, attention kernels) from the facts device_path.py gathers,
which also applies it (torch.compile, autocast). The plumbing has one home each:
process_group.py (torchrun, Slurm, barriers, the stop signal, random state, the device), output_folder.py (what
is in --output_dir), checkpoints.py (writing and reading model and trainer state, what a resume checks),
folder_lock.py (one run per --output_dir), atomic_io.py (every write), qa_model.py (loading the model,
parameter groups, the memory probe), packing.py (packed attention), train_log.py (what training reports, read
from the device on logging steps), training_state.py (the optimizer and its schedule, and what a resumed run is
given back).

Exit codes: 0 success, 2 bad input or flags, 3 interrupted with a checkpoint written, 1 anything else; interrupted
anywhere else (or by a second Ctrl-C) the process ends by the signal (the shell reports 130 / 143). What a run
guarantees (atomic sets of files, the folder's lock, what a resume checks): the README's "Reliability".
"""

from __future__ import annotations

import sys

from squad_internals import cli

if __name__ == "__main__":  # bad flags and missing files are answered at once, before torch takes seconds
    cli.one_line_interrupts_at_import()
    cli.exit_now_if_bad(lambda: cli.check_run_squad_command(sys.argv[1:]))

import contextlib
import functools
import json
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

import squad_metrics
import utils_squad
from squad_internals import (
    atomic_io,
    batching,
    checkpoints,
    decoding,
    device_path,
    eval_output,
    fast_path,
    folder_lock,
    input_data,
    output_folder,
    path_fallback,
    process_group,
    qa_model,
    train_log,
    training_state,
)
from squad_internals.cli import InputError, UsageError

logger = logging.getLogger("run_squad")


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written (exit code 3)."""


class NonFiniteError(Exception):
    """Too many consecutive non-finite losses or gradients."""


class OutOfMemory(Exception):
    """The GPU ran out of memory (one line, with the flags that keep the same global batch)."""


# Reported as bad input (exit code 2): the command line's, the data's, the model's and the launcher's.
BAD_INPUT = (utils_squad.SquadDataError, utils_squad.FeatureSettingsError, squad_metrics.ScoringInputError,
             qa_model.ModelLoadError, qa_model.PackingUnsupported, output_folder.CheckpointInputError,
             process_group.LaunchError, folder_lock.FolderLocked, checkpoints.WeightsUnreadable,
             path_fallback.PathUnavailable)


# --------------------------------------------------------------------------------------------
# main and run: file -> examples -> features -> training -> evaluation
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose_logging" in (argv if argv is not None else sys.argv[1:])
    handlers, output_dir, code = cli.install_interrupt_handlers(), None, cli.EXIT_FAILURE
    threads = torch.get_num_threads()  # a run on a CPU sets its own (prepare_model); an in-process caller's come back
    try:
        args = cli.check_run_squad_command(argv)
        output_dir = Path(args.output_dir)
        code = run(args)
        return code
    except (Exception, KeyboardInterrupt, cli.Terminated) as exc:  # noqa: BLE001 - every end is one line
        cli.ignore_interrupts(handlers)  # the run is over: another Ctrl-C must not cut its one line or its cleanup
        return report_end(exc, verbose, output_dir)
    finally:
        folder_lock.release_held()
        # A refused or failed run leaves no empty folder behind (the output folder, the feature cache).
        atomic_io.remove_created_folders(keep=code == cli.EXIT_OK)
        cli.restore_handlers(handlers)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def report_end(exc: BaseException, verbose: bool, output_dir: Path | None) -> int:
    """The one line (the traceback too with --verbose_logging) and the exit code of a run that did not finish."""
    if isinstance(exc, TrainingInterrupted):
        return cli.report(exc, cli.EXIT_INTERRUPTED, verbose, prefix="interrupted")
    if isinstance(exc, (KeyboardInterrupt, cli.Terminated)):  # data preparation, evaluation, saving; a second Ctrl-C
        if verbose:
            traceback.print_exc()
        return cli.report_interrupt(exc, output_folder.last_good(output_dir) if output_dir else None)
    return cli.report(exc, cli.exit_code(exc, BAD_INPUT), verbose)


@dataclass(frozen=True)
class RunData:
    """The data files of the run and their questions, read and validated before any model is loaded."""

    train_path: Path | None = None
    predict_path: Path | None = None
    train_examples: list | None = None
    eval_examples: list | None = None


@dataclass(frozen=True)
class RunSetup:
    """What is derived from the flags, the environment and the model's config, once, in prepare_model()."""

    train_path: Path | None
    predict_path: Path | None
    model_type: str
    beam_head: bool
    context_first: bool
    source: qa_model.ModelSource
    choice: fast_path.Choice  # the fast path: packing, precision, attention kernels (compilation: by the phase)
    flags: fast_path.PathFlags = fast_path.PathFlags()  # what the choice was made from, less the parts given up
    identity: dict = field(default_factory=dict)  # fingerprints of data and tokenizer, processes: what a resume compares
    config: object = None
    tokenizer: object = None
    head: object = None  # batching.SpanHead or BeamHead
    resume_from: Path | None = None  # the checkpoint training continues from

    def run_args(self, args, batches: batching.TrainBatches | None = None) -> dict:
        """The flags as training_args.json records them, with the derived paths and model type, and the
        micro-batches training used (--auto_find_batch_size may have changed them; the global batch is the
        same): passed back as flags, they reproduce the run. With the path taken and the run's identity
        (checkpoints.run_identity)."""
        derived = {"model_type": self.model_type, "train_path": self.train_path, "predict_path": self.predict_path,
                   "packed": self.choice.packing, "precision": self.choice.precision, **self.identity}
        if batches is not None:
            derived.update(per_gpu_train_batch_size=batches.batch_size, gradient_accumulation_steps=batches.accumulation)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in {**vars(args), **derived}.items()}


def run(args) -> int:
    """file -> examples -> features -> training -> evaluation, in that order."""
    rt = start_processes(args)
    data = read_data(args, rt)
    setup = prepare_model(args, rt, data)
    evaluation = prepare_evaluation(args, rt, setup, data) if cli.evaluating(args) else None
    if args.do_train:
        setup, evaluation = train_and_save(args, rt, setup, data, evaluation)
    if args.do_eval or args.do_predict:
        evaluate_models(args, rt, setup, evaluation)
    process_group.shutdown(rt)
    return cli.EXIT_OK


def start_processes(args):
    """The process group and the device, the log, and --output_dir claimed by this run."""
    rt = process_group.setup(args.local_rank, args.no_cuda)
    process_group.setup_logging(args.verbose_logging, rt.rank)
    claim_output_dir(Path(args.output_dir), rt)
    process_group.start_debugger(args.server_ip, args.server_port)
    process_group.barrier(rt)  # every rank has checked --output_dir before rank 0 writes anything into it
    return rt


def read_data(args, rt) -> RunData:
    """Every input file read and validated before any model is loaded or feature computed."""
    train_path, predict_path = input_data.data_paths(args, rt)
    return RunData(
        train_path, predict_path,
        train_examples=input_data.read_examples(train_path, args, is_training=True, require_answers=True)
        if args.do_train else None,
        eval_examples=input_data.read_examples(predict_path, args, is_training=False,
                                               require_answers=not args.do_predict)
        if cli.evaluating(args) else None)


def prepare_model(args, rt, data: RunData) -> RunSetup:
    """The config and tokenizer, the checkpoint to resume, and the fast path, tried on this device: everything
    that can be refused is refused here, before any feature is built."""
    logger.info("process %d of %d on %s", rt.rank, rt.world_size, rt.device)
    if rt.device.type == "cpu":  # the data read and checked: the run computes from here
        logger.info("%s", process_group.use_cpu_threads())
    process_group.set_seed(args.seed)
    source = qa_model.ModelSource(args.model_name_or_path, args.config_name, args.tokenizer_name, args.cache_dir,
                                  args.trust_remote_code)
    config = qa_model.load_config(source, args.model_type)
    tokenizer = qa_model.load_tokenizer(source, args.do_lower_case)
    resume_from = checkpoints.resolve_resume(Path(args.output_dir), args.resume_from_checkpoint or (
        "latest" if cli.restarted_by_torchrun() else None)) if args.do_train else None
    beam_head = qa_model.uses_beam_head(config.model_type, args.simple_span_head)
    flags = fast_path.PathFlags.from_args(args)
    setup = RunSetup(
        data.train_path, data.predict_path, config.model_type, beam_head,
        context_first=bool(args.context_first or tokenizer.padding_side == "left"), source=source,
        choice=device_path.choose_path(flags, rt.device, config, args.trust_remote_code,
                                       device_path.resumed_packing(resume_from)), flags=flags,
        identity=checkpoints.run_identity(data.train_path if args.do_train else None, tokenizer, rt.world_size),
        config=config, tokenizer=tokenizer, head=batching.make_head(beam_head), resume_from=resume_from)
    check_model_settings(args, setup)
    setup = check_path_runs(args, setup, rt)
    if setup.choice.sdpa_without_cudnn:
        torch.backends.cuda.enable_cudnn_sdp(False)  # for the whole process: see fast_path's attention rule
    return setup


def prepare_evaluation(args, rt, setup: RunSetup, data: RunData) -> Evaluation:
    """The evaluation's features and batches, built once for every model evaluated. Compiled only in a run that
    does not train, when asked (a training run decides compilation for training, and evaluates eagerly)."""
    compiled = False
    if not args.do_train:
        choice = fast_path.compilation(setup.choice, args.torch_compile, rt.device.type == "cuda", training=False,
                                       parameters=0, steps=0)
        logger.info(choice.describe())
        compiled = choice.compile_evaluation
    features = input_data.build_features(args, rt, setup.tokenizer, data.predict_path, data.eval_examples,
                                         setup.context_first, is_training=False)
    return Evaluation(data.eval_examples, features,
                      make_batching(args, setup, features, args.per_gpu_eval_batch_size, compiled=compiled),
                      EvalConfig.from_flags(args, setup, data.predict_path, score=not args.do_predict,
                                            compiled=compiled))


def train_and_save(args, rt, setup: RunSetup, data: RunData, evaluation: Evaluation | None):
    """Training on the path its first step ran on, then the final model. Returns the setup and evaluation of
    that path (an automatic choice given up there is given up for evaluation too)."""
    features = input_data.build_features(args, rt, setup.tokenizer, data.train_path, data.train_examples,
                                         setup.context_first, is_training=True)
    checkpoints.check_resume(setup.resume_from, setup.run_args(args), setup.config, args.auto_find_batch_size)
    trained = prepare_training(args, setup, rt, features)
    setup, choice = trained.setup, trained.choice
    if trained.fell_back:  # the path given up may be the one the checkpoint was trained on
        checkpoints.check_resume(setup.resume_from, setup.run_args(args), setup.config, args.auto_find_batch_size)
    if evaluation is not None and trained.fell_back:
        evaluation = replace(evaluation, batching=make_batching(args, setup, evaluation.features,
                                                                args.per_gpu_eval_batch_size),
                             config=replace(evaluation.config, precision=setup.choice.precision))
    saving = Saving(Path(args.output_dir), args.save_steps, args.save_total_limit, setup.tokenizer,
                    setup.run_args(args, trained.batches))
    summary = train(trained.model, features, trained.batches, rt,
                    loop=LoopConfig.from_flags(args, setup, data.train_path, report_first_step=choice.compile_training),
                    optim=training_state.OptimConfig.from_flags(args), saving=saving, resume_from=setup.resume_from,
                    evaluation=evaluation if args.evaluate_during_training else None,
                    compiled=choice.compile_training)
    logger.info("path taken: %s", "; ".join([choice.short(), *trained.notes, *summary["path_notes"]]))
    if rt.is_main:
        checkpoints.save_final_model(Path(args.output_dir), trained.model, setup.tokenizer, saving.run_args,
                                     summary["global_step"])
    process_group.barrier(rt)
    return setup, evaluation


def evaluate_models(args, rt, setup: RunSetup, evaluation: Evaluation) -> None:
    """Each model to evaluate (the final one, the checkpoints with --eval_all_checkpoints, or
    --model_name_or_path), its metrics printed once on stdout as one JSON line for scripts."""
    for folder, prefix in output_folder.models_to_evaluate(Path(args.output_dir), args.eval_all_checkpoints,
                                                           args.do_train, args.model_name_or_path):
        while True:  # an automatic choice that fails in inference is given up, and the model evaluated again
            model = load_model(args, setup, folder, eval_device=rt.device)
            if evaluation.config.compiled:
                device_path.compile_model(model, device_path.Compilation.from_flags(args))
            try:
                results = evaluate(model, evaluation, rt, prefix=prefix, model_folder=folder)
                break
            except InferenceFailed as failed:
                setup, evaluation = evaluation_fallback(args, rt, setup, evaluation, failed)
        if rt.is_main and args.do_eval:
            print(json.dumps({"step": prefix, **results}), flush=True)


def evaluation_fallback(args, rt, setup: RunSetup, evaluation: Evaluation,
                        failed: InferenceFailed) -> tuple[RunSetup, Evaluation]:
    """The setup and evaluation without the part of the path that failed in inference (one warning), or its
    refusal when it was asked for; nothing to give up: the error is the run's own."""
    choice = replace(setup.choice, compile_evaluation=evaluation.config.compiled)
    if not choice.risky():
        raise failed.__cause__ or failed
    part, _ = fast_path.part_to_give_up(choice, setup.flags, failed.compile_failure)
    setup = give_up(args, setup, part, failed.problem, "in evaluation", rt)
    compiled = evaluation.config.compiled and part != "compile"
    return setup, replace(evaluation, batching=make_batching(args, setup, evaluation.features,
                                                             args.per_gpu_eval_batch_size, compiled=compiled),
                          config=replace(evaluation.config, precision=setup.choice.precision, compiled=compiled))


def check_path_runs(args, setup: RunSetup, rt) -> RunSetup:
    """Before any data is prepared: the precision and (asked for or possible) torch.compile tried on the device.
    An explicit request that cannot run is refused in one line; an automatic precision that cannot is given up
    for fp32 with a warning. Every rank takes the same way."""
    problem = process_group.first_problem(rt, path_fallback.precision_problem(setup.choice.precision, rt.device))
    if problem is not None:
        setup = give_up(args, setup, "precision", problem, "in a probe", rt)
    if args.torch_compile == "on":
        problem = process_group.first_problem(rt, path_fallback.compile_problem(
            args.torch_compile_backend, args.torch_compile_mode, rt.device))
        if problem is not None:
            raise path_fallback.PathUnavailable(fast_path.refusal("compile", "--torch_compile on", problem,
                                                                  "in a probe"))
    return setup


def give_up(args, setup: RunSetup, part: str, problem: str, where: str, rt) -> RunSetup:
    """The setup without `part` of its path (one warning), or the refusal of an explicit request
    (PathUnavailable). A resumed run keeps its checkpoint's packing unless packing is what is given up (then
    train_and_save's second check_resume says so)."""
    explicit = setup.flags.explicit(part)
    if explicit is not None:
        raise path_fallback.PathUnavailable(fast_path.refusal(part, explicit, problem, where))
    logger.warning(fast_path.fallback_warning(part, problem, where))
    flags = setup.flags.safer(part)
    resumed = device_path.resumed_packing(setup.resume_from) if part != "packing" else None
    return replace(setup, flags=flags, choice=device_path.choose_path(flags, rt.device, setup.config,
                                                                      args.trust_remote_code, resumed))


@dataclass(frozen=True)
class PreparedTraining:
    """The model and batches training runs with, on the path its first step ran on."""

    setup: RunSetup
    model: torch.nn.Module
    batches: batching.TrainBatches
    choice: fast_path.Choice  # the path, compilation included
    notes: tuple[str, ...] = ()  # the automatic choices given up, for the end of training

    @property
    def fell_back(self) -> bool:
        return bool(self.notes)


def prepare_training(args, setup: RunSetup, rt, features) -> PreparedTraining:
    """Load the model, build its batches, decide compilation, and try the first micro-batch on that path
    (path_fallback.first_step_problem: undone afterwards). A part of the path chosen automatically that fails
    there is given up for the next safer one, with one warning, and everything is prepared again from the same
    random state, as if the safer path had been chosen from the start; an explicit one is refused."""
    rng, notes, position = process_group.rng_state(), [], training_state.resumed_position(setup.resume_from)
    while True:
        model = load_model(args, setup, str(setup.resume_from or args.model_name_or_path)).to(rt.device)
        batches = train_batches(args, setup, rt, model, features)
        choice = training_compilation(args, setup, rt, model, features, batches)
        logger.info(choice.describe())
        if choice.compile_training:
            batches = compile_for_training(args, setup, model, features, batches)
        failure = path_fallback.first_step_failure(choice, model, batches, features, rt, position, args.seed)
        if failure is None:
            return PreparedTraining(setup, model, batches, choice, tuple(notes))
        kind, problem = failure
        if kind == "memory":  # not the path's fault: the run's own one line, on every rank
            raise OutOfMemory(out_of_memory_advice(batches, args.max_seq_length, step=position["global_step"] + 1))
        part, _ = fast_path.part_to_give_up(choice, setup.flags, compile_failure=kind == "compile")
        setup = give_up(args, setup, part, problem, "in the first training step", rt)
        notes.append(f"{fast_path.SAFER[part]}: {fast_path.SAFER_FROM[part]} failed in the first step ({problem})")
        process_group.set_rng_state(rng)  # the safer path starts where this one did


def training_compilation(args, setup: RunSetup, rt, model, features,
                         batches: batching.TrainBatches) -> fast_path.Choice:
    """The path with compilation decided for this run's length; an automatic compilation is first probed
    (path_fallback.compile_problem) and given up, with a warning, where it cannot run."""
    loop, cuda = LoopConfig.from_flags(args, setup, None), rt.device.type == "cuda"
    run_length = fast_path.needs_run_length(setup.flags.torch_compile, cuda, training=True)
    steps = count_optimizer_steps(loop, rt, features, batches) if run_length else 0
    parameters = sum(p.numel() for p in model.parameters())
    choice = fast_path.compilation(setup.choice, setup.flags.torch_compile, cuda, training=True,
                                   parameters=parameters, steps=steps)
    if choice.compile_training and setup.flags.explicit("compile") is None:
        problem = process_group.first_problem(rt, path_fallback.compile_problem(
            args.torch_compile_backend, args.torch_compile_mode, rt.device))
        if problem is not None:
            logger.warning(fast_path.fallback_warning("compile", problem, "in a probe"))
            choice = fast_path.compilation(setup.choice, "off", cuda, training=True, parameters=parameters,
                                           steps=steps)
    return choice


def compile_for_training(args, setup: RunSetup, model, features,
                         batches: batching.TrainBatches) -> batching.TrainBatches:
    """Compile the model; padded batches then take widths rounded to 64 (a handful of shapes to compile)."""
    device_path.compile_model(model, device_path.Compilation.from_flags(args))
    if batches.batching.packed:
        return batches
    return replace(batches, batching=make_batching(args, setup, features, batches.batch_size, compiled=True))


def claim_output_dir(output_dir: Path, rt) -> None:
    """Rank 0, the only process that writes into --output_dir, takes its lock (folder_lock.py) until it exits
    (main releases it); every rank learns whether it did, so that a refused run ends on all ranks at once."""
    problem = None
    if rt.is_main:
        try:
            folder_lock.hold(output_dir)
        except folder_lock.FolderLocked as exc:
            problem = str(exc)
        except OSError as exc:  # the other ranks must hear of it too, or they would wait for rank 0 forever
            problem = f"--output_dir {output_dir}: cannot take its lock ({exc.strerror or exc})"
    problem = process_group.from_main(rt, problem)
    if problem is not None:
        raise folder_lock.FolderLocked(problem)


def check_model_settings(args, setup: RunSetup) -> None:
    """What needs the config and tokenizer, said before any feature is built."""
    try:
        utils_squad.check_sequence_lengths(setup.tokenizer,
                                           input_data.feature_settings(args, setup.context_first, False))
    except utils_squad.FeatureSettingsError as exc:
        raise UsageError(f"--max_seq_length ({args.max_seq_length}) must be larger than --max_query_length "
                         f"({args.max_query_length}) + {exc.num_special} special tokens of this tokenizer") from exc
    if setup.choice.packing:
        qa_model.check_packing(setup.config)


def make_batching(args, setup: RunSetup, features, batch_size: int, compiled: bool = False):
    return batching.make_batching(setup.head, setup.config, features, batch_size, packed=setup.choice.packing,
                                  pack_tokens=args.pack_tokens, max_seq_length=args.max_seq_length,
                                  version_2=args.version_2_with_negative, lang_id=args.lang_id, compiled=compiled,
                                  grouped=args.length_grouping == "on", attn_implementation=args.attn_implementation)


def load_model(args, setup: RunSetup, path: str, eval_device=None):
    """The model, packed as the path says (compiled by the caller). A model loaded only to evaluate on a GPU
    (``eval_device``) gets bf16/fp16 weights when the run computes in them: half the memory, no autocast casts."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.choice.precision)
    dtype = half if half is not None and eval_device is not None and eval_device.type == "cuda" else torch.float32
    model = qa_model.load_model(path, setup.config, setup.source, setup.beam_head, args.attn_implementation, dtype)
    if setup.choice.packing:
        qa_model.enable_packing(model, attention_dropout=args.packed_attention_dropout == "on")
    return model


def train_batches(args, setup: RunSetup, rt, model, features) -> batching.TrainBatches:
    """The flags' micro-batches, or with --auto_find_batch_size the largest that fits (a resumed run keeps
    its checkpoint's: the data plan must not change under it)."""
    size, accum = args.per_gpu_train_batch_size, args.gradient_accumulation_steps
    if args.auto_find_batch_size and setup.resume_from is not None:
        saved = json.loads((setup.resume_from / output_folder.TRAINING_ARGS).read_text())
        size, accum = saved["per_gpu_train_batch_size"], saved["gradient_accumulation_steps"]
    elif args.auto_find_batch_size:
        # A compiled padded run pads to 64 (decided after this probe, by the run's length): probe at that width
        # whenever the run may compile, so the batch found fits either way.
        may_compile = rt.device.type == "cuda" and args.torch_compile != "off" and not setup.choice.packing

        def fits(batch_size: int) -> bool:
            candidate = make_batching(args, setup, features, batch_size, compiled=may_compile)
            return qa_model.probe_memory(model.to(rt.device), candidate, features, rt.device,
                                         device_path.amp_context(setup.choice.precision, rt.device),
                                         extra_copies=int(rt.distributed))
        size, accum = qa_model.find_batch_size(fits, size, accum, rt.distributed and rt.cpu_group)
        if size == 0:
            raise OutOfMemory(f"out of GPU memory with one feature per device of up to --max_seq_length "
                              f"{args.max_seq_length} tokens: shorten --max_seq_length or use a bigger GPU")
    return batching.TrainBatches(size, accum, make_batching(args, setup, features, size))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """What the training loop reads of the flags: its length, its rhythm and its precision."""

    output_dir: Path
    train_file: str = "the training data"  # named when there is too little of it
    max_seq_length: int = 384  # named in the out-of-memory advice
    max_steps: int = -1  # > 0: total optimizer steps, overriding num_train_epochs
    num_train_epochs: float = 3.0
    seed: int = 42
    logging_steps: int = 500
    eval_steps: int = 0  # 0: every logging_steps
    save_steps: int = 500  # 0: never (a stop signal still saves)
    max_nonfinite_steps: int = 10
    precision: str = "fp32"  # fp32, bf16 or fp16 (with a gradient scaler)
    report_first_step: bool = False  # compiled: log the first step's time, compilation included

    @classmethod
    def from_flags(cls, args, setup: RunSetup, train_path: Path | None, report_first_step: bool = False) -> LoopConfig:
        """From the parsed flags, by keyword (the defaults above are the parser's: a test ties them)."""
        same_names = ("max_seq_length", "max_steps", "num_train_epochs", "seed", "logging_steps", "eval_steps",
                      "save_steps", "max_nonfinite_steps")
        return cls(output_dir=Path(args.output_dir), train_file=str(train_path), precision=setup.choice.precision,
                   report_first_step=report_first_step, **{name: getattr(args, name) for name in same_names})


@dataclass(frozen=True)
class Saving:
    """Where and how often checkpoints are written, and what goes with the weights."""

    output_dir: Path
    save_steps: int
    save_total_limit: int
    tokenizer: object
    run_args: dict  # training_args.json


def train(model, features, batches: batching.TrainBatches, rt, *, loop: LoopConfig,
          optim: training_state.OptimConfig, saving: Saving | None = None, resume_from: Path | None = None,
          evaluation: Evaluation | None = None, compiled: bool = False) -> dict:
    """Optimizer steps, each over its micro-batches, then step, then log / evaluate / save / stop, with no host
    synchronisation inside a step. Returns the summary (speed, memory, the last step, path notes)."""
    ddp, accum, batcher = wrap_for_processes(model, rt), batches.accumulation, batches.batching
    total_steps, prefetch = prefetched_steps(loop, rt, features, batches)
    optimization = training_state.start_optimization(optim, loop.precision, model, rt, total_steps)
    position = start = training_state.restore_position(resume_from, optimization, rt)
    announce_training(rt, batches, len(features), total_steps)
    if rt.is_main:
        output_folder.clean_output_dir(loop.output_dir, resume_from)  # a killed run's leftovers
    writer = train_log.open_tensorboard(str(loop.output_dir)) if rt.is_main else None
    stop = process_group.StopFlag(rt).install()  # SIGTERM / SIGINT: the step is finished, a checkpoint written
    meter, progress = train_log.Meter(rt.device, rt.world_size), progress_bar(rt, total_steps, start)
    fallback, steps, scaler = path_fallback.EagerFallback(model, compiled), prefetch(start), optimization.scaler
    context = StepContext(model, rt, loop, optimization, meter, writer, stop, fallback, saving, evaluation,
                          resume_from, first_step=start["global_step"] + 1)
    try:
        model.train()
        for position, group in steps:
            for loss, seqs, tokens in step_gradients(ddp, batcher, group, rt, loop.precision, scaler, accum,
                                                     fallback, stop, position["global_step"]):
                meter.add(loss, seqs, tokens)
            # The step: unscale, clip, finiteness, step, zero. A non-finite gradient skips the update on the
            # device: the fused AdamW kernel takes found_inf (from the scaler with --fp16), so nothing waits.
            if scaler is not None:
                scaler.unscale_(optimization.optimizer)
            skipped = ~torch.isfinite(torch.nn.utils.clip_grad_norm_(ddp.parameters(), optim.clip_norm))
            if scaler is not None:
                scaler.step(optimization.optimizer)
                scaler.update()
            else:
                optimization.optimizer.found_inf = skipped.float()
                optimization.optimizer.step()
            optimization.scheduler.step()
            optimization.optimizer.zero_grad(set_to_none=True)
            meter.end_step(position["global_step"], skipped, scaler)
            progress.update(1)
            between_steps(position, context)
        check_skips(loop, meter)
    except torch.cuda.OutOfMemoryError as exc:
        computing = position["global_step"] + (position is start)  # before its first step, the loop's position
        raise OutOfMemory(out_of_memory_advice(batches, loop.max_seq_length, computing)) from exc  # is the last one
    finally:
        for closing in (steps.close, stop.restore, progress.close):
            closing()
        train_log.close_quietly(writer)
    return {**meter.summary(position["global_step"] - start["global_step"]), "global_step": position["global_step"],
            "last_window": meter.last_window, "path_notes": [fallback.note] if fallback.note else []}


def step_gradients(ddp, batcher, group, rt, precision: str, scaler, accum: int, fallback, stop, step: int) -> list:
    """The step's micro-batches, forward and backward; computed again eagerly when its compilation fails."""
    fallback.step_begins()
    try:
        return micro_batches(ddp, batcher, group, rt, precision, scaler, accum)
    except Exception as exc:
        if not fallback.recover(exc, step):
            raise
        stop.eager = True  # the other ranks follow at the next agreed step
        return micro_batches(ddp, batcher, group, rt, precision, scaler, accum)


@dataclass(frozen=True)
class StepContext:
    """What the work between two optimizer steps reads and writes."""

    model: torch.nn.Module
    rt: object
    loop: LoopConfig
    optimization: training_state.Optimization
    meter: train_log.Meter
    writer: object
    stop: process_group.StopFlag
    fallback: path_fallback.EagerFallback
    saving: Saving | None
    evaluation: Evaluation | None
    resume_from: Path | None
    first_step: int  # this run's (compiled: its time is logged, compilation included)


def between_steps(position: dict, ctx: StepContext) -> None:
    """Logging, evaluation, saving and the stop signal: the steps where the host reads the device. Raises
    TrainingInterrupted when the ranks agreed to stop (a checkpoint written first)."""
    loop, saving, evaluation, step = ctx.loop, ctx.saving, ctx.evaluation, position["global_step"]
    if step == ctx.first_step and loop.report_first_step:
        log_first_step(ctx.rt, ctx.meter)
    log_now, interrupted = step % loop.logging_steps == 0, ctx.stop.agreed()
    if ctx.stop.eager_agreed and ctx.fallback.compiled:
        ctx.fallback.switch(f"a compiled step failed on another process by step {step}")
    eval_now = evaluation is not None and step % (loop.eval_steps or loop.logging_steps) == 0 and not interrupted
    save_now = saving is not None and ((saving.save_steps and step % saving.save_steps == 0) or interrupted)
    if log_now or eval_now or save_now:
        check_skips(loop, ctx.meter)
    if log_now:
        ctx.meter.log(ctx.writer, ctx.optimization.scheduler, step)
    if save_now:
        save_checkpoint(saving, ctx.rt, ctx.model, ctx.optimization, position, ctx.resume_from)
    if eval_now:  # after saving: the tuned threshold goes into that checkpoint
        evaluate_during_training(ctx.model, evaluation, ctx.rt, step, loop.output_dir, bool(save_now), ctx.writer)
    if save_now or eval_now:
        ctx.meter.restart_window()  # the next window's throughput is the training's own
    if interrupted:
        written = (f"checkpoint written to {loop.output_dir / (output_folder.CHECKPOINT_PREFIX + str(step))}"
                   if saving is not None else "no checkpoint (nothing to save it with)")
        raise TrainingInterrupted(f"signal {ctx.stop.signum or 'on another rank'}: stopped at step {step}, {written}")


def micro_batches(ddp, batcher, group, rt, precision: str, scaler, accum: int) -> list[tuple]:
    """Forward and backward of one optimizer step's micro-batches: (loss, sequences, real tokens) of each."""
    losses = []
    for micro, (batch, seqs, tokens) in enumerate(group):
        batch = batching.to_device(batch, rt.device)
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        with ddp.no_sync() if rt.distributed and micro < len(group) - 1 else contextlib.nullcontext():
            with device_path.amp_context(precision, rt.device):
                loss = batcher.forward(ddp, batch, training=True).loss / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        losses.append((loss.detach(), seqs, tokens))
    return losses


def evaluate_during_training(model, evaluation: Evaluation, rt, step: int, out: Path, saved: bool, writer) -> None:
    """An inference failure here costs this evaluation, not the training run: the evaluation after training
    falls back to a safer path (evaluate_models)."""
    folder = out / f"{output_folder.CHECKPOINT_PREFIX}{step}"
    try:
        results = evaluate(model, evaluation, rt, prefix=str(step), model_folder=str(folder) if saved else None)
        train_log.write_scalars(writer, "eval", results, step)
    except InferenceFailed as failed:
        logger.warning("evaluation at step %d failed (%s): training goes on, and the evaluation after training "
                       "falls back to a safer path", step, failed.problem)
    model.train()


def out_of_memory_advice(batches: batching.TrainBatches, max_seq_length: int, step: int) -> str:
    smaller = qa_model.smaller_batch(batches.batch_size)
    advice = ("shorten --max_seq_length or use a bigger GPU" if smaller == batches.batch_size else
              f"keep the same global batch with --per_gpu_train_batch_size {smaller} --gradient_accumulation_steps "
              f"{batches.accumulation * batches.batch_size // smaller}, or let --auto_find_batch_size find it")
    return f"out of GPU memory at step {step} with {batches.describe(max_seq_length)}: {advice}"


def epoch_plans(loop: LoopConfig, rt, features, batches: batching.TrainBatches):
    """The plan of an epoch, as a function of the epoch (a deterministic function of the seed)."""
    lengths = features.lengths()

    @functools.lru_cache(maxsize=1)  # the count of steps and the first steps read the same epoch: plan it once
    def plan_of_epoch(epoch: int) -> list[list]:
        return batching.epoch_plan(batches.batching, lengths, loop.seed + epoch, rt.rank, rt.world_size,
                                   batches.accumulation)

    return plan_of_epoch


def count_optimizer_steps(loop: LoopConfig, rt, features, batches: batching.TrainBatches) -> int:
    """The number of optimizer steps training will run (its first epoch planned to count them)."""
    return total_optimizer_steps(loop, rt, len(epoch_plans(loop, rt, features, batches)(0)), len(features), batches)


def prefetched_steps(loop: LoopConfig, rt, features, batches: batching.TrainBatches):
    """The number of optimizer steps, and a function giving those from a position on, their batches built
    (and on a GPU pinned, for a non-blocking copy) in a background thread while the steps before run."""
    lengths, batcher = features.lengths(), batches.batching
    plan_of_epoch = epoch_plans(loop, rt, features, batches)

    def build(job):
        position, group = job
        return position, [(batching.pinned(batcher.tensors(features, idx, with_labels=True), rt.device), len(idx),
                           int(lengths[idx].sum())) for idx in group]

    total = total_optimizer_steps(loop, rt, len(plan_of_epoch(0)), len(features), batches)
    return total, lambda start: batching.Prefetcher(batching.optimizer_steps(plan_of_epoch, start, total), build)


def wrap_for_processes(model, rt):
    """DDP across processes (the model itself in one process)."""
    model.to(rt.device)
    if not rt.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
        # XLNet's mask_emb (both heads) and the beam head's unused branches get no gradient.
        find_unused_parameters=model.config.model_type in qa_model.BEAM_HEAD_TYPES,
        # The encoders' buffers are constants (position and token type ids): no broadcast before each forward,
        # which also keeps the ranks' collectives matched when one computes a step again (path_fallback).
        broadcast_buffers=False)


def total_optimizer_steps(loop: LoopConfig, rt, steps_per_epoch: int, num_features: int,
                          batches: batching.TrainBatches) -> int:
    """max_steps, else num_train_epochs times the first epoch's steps (packs per epoch vary a little)."""
    if steps_per_epoch == 0:
        raise InputError(f"{loop.train_file}: too few features ({num_features}) for one optimizer step of "
                         f"{batches.batch_size} x {batches.accumulation} x {rt.world_size} processes")
    total = loop.max_steps if loop.max_steps > 0 else int(steps_per_epoch * loop.num_train_epochs)
    return max(total, 1)


def save_checkpoint(saving: Saving, rt, model, optimization: training_state.Optimization, position: dict,
                    protect: Path | None) -> None:
    rng = process_group.gather_rng_states(rt)  # every rank's stream, so each resumes its own dropout masks
    if rt.is_main:
        state = {**optimization.state(), "rng": rng, "position": position}
        checkpoints.save_checkpoint(saving.output_dir, model, saving.tokenizer, saving.run_args, state)
        output_folder.prune(saving.output_dir, saving.save_total_limit, protect, position["global_step"])
    process_group.barrier(rt)


def check_skips(loop: LoopConfig, meter) -> None:
    """Log the updates skipped as non-finite; after max_nonfinite_steps in a row, stop (NonFiniteError).

    With --fp16 a few skips are routine: the gradient scaler halves its scale after each overflow.
    """
    limit = meter.skips(loop.max_nonfinite_steps)
    if limit is not None:
        raise NonFiniteError(f"{limit[1]} consecutive non-finite steps ending at step {limit[0]}; "
                             f"last good checkpoint: {output_folder.last_good(loop.output_dir)}")


def log_first_step(rt, meter) -> None:
    """--torch_compile: the first step's time, compilation included (read once: one host sync)."""
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    logger.info("torch.compile: the first optimizer step took %.1f s (compilation included)",
                time.perf_counter() - meter.start)


def announce_training(rt, batches: batching.TrainBatches, num_features: int, total_steps: int) -> None:
    logger.info("training: %d features, %d processes x %d per device x %d accumulation, %d optimizer steps%s",
                num_features, rt.world_size, batches.batch_size, batches.accumulation, total_steps,
                f"; packs of {batches.batching.tokens} tokens" if batches.batching.packed else "")


def progress_bar(rt, total_steps: int, start: dict):
    """A bar on a terminal; a log file gets the per-window lines instead (a bar's redraws would fill it)."""
    return tqdm(total=total_steps, initial=start["global_step"], desc="train",
                disable=not rt.is_main or not sys.stderr.isatty(), dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """What evaluation reads of the flags: the decoder, the no-answer threshold, where results go."""

    output_dir: Path
    settings: decoding.DecodingSettings
    threshold: float = 0.0  # --null_score_diff_threshold
    score: bool = True  # --do_eval (score against the answers); False: --do_predict
    predict_path: Path | None = None
    windows: dict | None = None  # the window settings recorded with a tuned threshold
    precision: str = "fp32"
    compiled: bool = False  # False: a compiled model runs eagerly here (no second compilation for evaluation)

    @classmethod
    def from_flags(cls, args, setup: RunSetup, predict_path: Path | None, score: bool, compiled: bool) -> EvalConfig:
        """From the parsed flags, by keyword (the defaults above and DecodingSettings' are the parser's: a test
        ties them)."""
        settings = decoding.DecodingSettings(n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
                                             version_2_with_negative=args.version_2_with_negative)
        windows = {name: getattr(args, name) for name in ("max_seq_length", "doc_stride", "max_query_length")}
        return cls(output_dir=Path(args.output_dir), settings=settings, threshold=args.null_score_diff_threshold,
                   score=score, predict_path=predict_path, windows=windows, precision=setup.choice.precision,
                   compiled=compiled)


@dataclass(frozen=True)
class Evaluation:
    """The evaluation data, its batches and its settings, built once for every model evaluated."""

    examples: list
    features: utils_squad.SquadFeatures
    batching: batching.PaddedBatches | batching.PackedBatches
    config: EvalConfig


def evaluate(model, evaluation: Evaluation, rt, prefix: str, model_folder: str | None = None) -> dict:
    """Distributed inference, then decoding, files and scores on rank 0. Returns the metrics (rank 0).

    SQuAD 2.0: the decoder gives every question's best span and its null odds; the predictions file is
    those spans at the no-answer threshold (decided once, by decoding.Decoded.answers), and EM/F1/HasAns/NoAns
    score exactly that file, while the best_* sweep runs over the spans themselves (a threshold already
    applied would hide spans from it). The tuned threshold is written into the evaluated model folder, and
    with matplotlib the sweep and the official precision-recall curves into no_answer_<step>.png.
    """
    started, config, features = time.perf_counter(), evaluation.config, evaluation.features
    logger.info("evaluating %s: %d features", prefix if prefix != "final" else "the model", len(features))
    parts = process_group.gather_to_main(rt, agreed_inference(model, evaluation, rt))
    results: dict = {}
    if rt.is_main:
        inferred, head = time.perf_counter(), evaluation.batching.head
        decoded = head.decode(evaluation.examples, features, parts, config.settings)
        predictions = decoded.answers(config.threshold)
        logger.info("inference on %d features: %.1f s; decoding %d questions: %.2f s", len(features),
                    inferred - started, len(evaluation.examples), time.perf_counter() - inferred)
        if config.score:
            results = eval_output.score_predictions(evaluation.examples, predictions, decoded, config, prefix)
        eval_output.write_evaluation(config, prefix, evaluation.examples, predictions, decoded, results, head.beam,
                                     model_folder)
        logger.info("evaluated %d features in %.1f s", len(features), time.perf_counter() - started)
    process_group.barrier(rt)
    return results


class InferenceFailed(Exception):
    """Inference raised on some rank: every rank raises this, with the first failing rank's error in words."""

    def __init__(self, compile_failure: bool, problem: str):
        super().__init__(f"inference failed ({problem})")
        self.compile_failure, self.problem = compile_failure, problem


def agreed_inference(model, evaluation: Evaluation, rt) -> dict:
    """infer(), with its failure agreed across the ranks (none waits for a rank that failed): InferenceFailed on
    every rank, from which evaluate_models may fall back to a safer path."""
    outputs, error = None, None
    try:
        outputs = infer(model, evaluation.features, evaluation.batching, rt, precision=evaluation.config.precision,
                        compiled=evaluation.config.compiled)
    except OutOfMemory:
        raise
    except Exception as exc:  # noqa: BLE001 - agreed below, then raised on every rank
        error = exc
    found = None if error is None else (path_fallback.is_compile_failure(error), path_fallback.what_failed(error))
    problem = process_group.first_problem(rt, found)
    if problem is not None:
        raise InferenceFailed(*problem) from error
    return outputs


def infer(model, features, batcher, rt, *, precision: str = "fp32", compiled: bool = True) -> dict:
    """The head's arrays for this rank's share of the batches, copied to the host once at the end.

    The batches (or packs) are those of one process, dealt out to the ranks, so every feature sees the
    same neighbours and arithmetic whatever the number of processes. Float32 weights (the training model)
    compute under bf16/fp16 autocast; a model loaded for evaluation on a GPU has half-precision weights.
    compiled=False runs a model compiled for training eagerly (evaluation mode would compile it again).
    """
    model.to(rt.device)
    model.eval()
    weights = next(model.parameters()).dtype
    amp = (device_path.amp_context(precision, rt.device) if weights == torch.float32
           else contextlib.nullcontext())
    batches = batching.Prefetcher(batcher.plan(features.lengths())[rt.rank::rt.world_size],
                                  lambda idx: batching.pinned(batcher.tensors(features, idx, with_labels=False), rt.device))
    outputs = []
    try:
        with torch.inference_mode(), contextlib.nullcontext() if compiled else device_path.eager_stance():
            for batch in batches:
                batch = batching.to_device(batch, rt.device)
                with amp:
                    outputs.append(batcher.head.outputs(batcher.forward(model, batch, training=False), batch))
        return batcher.head.collect(outputs)
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of GPU memory evaluating with --per_gpu_eval_batch_size {batcher.batch_size}: "
                          f"pass --per_gpu_eval_batch_size {max(1, batcher.batch_size // 2)}") from exc
    finally:
        batches.close()


if __name__ == "__main__":
    cli.exit_with(main())
