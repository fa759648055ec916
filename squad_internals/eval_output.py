"""What an evaluation gives once its answers are decoded: the official scores of the predictions (for SQuAD
2.0 with the sweep over the no-answer threshold), their headline in the log, and its files written as one set.

Why a module of its own: run_squad.evaluate() reads as inference, decoding, scores and files; how the scorer
is called (its threshold the decoding's, so that EM/F1 describe the predictions file) and how a set of files
is written so that a failure leaves the previous one are one concern, read apart from it. The configuration
comes from run_squad.EvalConfig, which stays beside evaluate(): these functions read its fields, not its type.
"""

from __future__ import annotations

import logging
from pathlib import Path

import squad_metrics
from squad_internals import atomic_io, decoding, output_folder

# Its lines are the command line's own report (the scores, the files written; scripts and tests read them as
# `run_squad: evaluation ...`): the command line's logger, not this module's name.
logger = logging.getLogger("run_squad")


def score_predictions(examples, predictions, decoded: decoding.Decoded, config, prefix: str) -> dict:
    """Official scores of the predictions file; for SQuAD 2.0 the sweep over the spans. config:
    run_squad.EvalConfig (its decoding settings and no-answer threshold)."""
    gold, v2 = squad_metrics.gold_answers_from_examples(examples), config.settings.version_2_with_negative
    # The scorer's --na-prob-thresh is the decoding threshold: a question whose null odds exceed it was
    # predicted "" already, so EM/F1 describe exactly the predictions file just written (the official
    # default of 1.0 would blank correct spans when the threshold is above 1).
    results = dict(squad_metrics.squad_evaluate(
        gold, predictions, na_probs=decoded.null_odds if v2 else None, na_prob_thresh=config.threshold,
        version_2=v2, sweep_preds=decoded.best_spans if v2 else None))
    logger.info("evaluation %s: %s", prefix, describe_scores(results))
    return results


def describe_scores(results: dict) -> str:
    """The headline numbers for the log; every metric is in eval_results.json and, for --do_eval, in the one
    JSON line on stdout (printed once, for scripts to parse)."""
    text = output_folder.em_f1(results) + (f" on {results['total']} questions" if "total" in results else "")
    if "HasAns_f1" in results and "NoAns_exact" in results:
        text += f" (answerable F1 {results['HasAns_f1']:.2f}, unanswerable EM {results['NoAns_exact']:.2f})"
    if "best_f1" in results:
        text += f"; best F1 {results['best_f1']:.2f} at no-answer threshold {results['best_f1_thresh']:.4g}"
    return text


class EvaluationWriteError(Exception):
    """The files of an evaluation could not be written (a full disk, ...): none of them was (exit code 1)."""


def write_evaluation(config, prefix: str, examples, predictions, decoded: decoding.Decoded,
                     results: dict, beam: bool, model_folder: str | None) -> None:
    """The files of one evaluation as one set (atomic_io.FileSet): predictions, n-best, null odds, the plot,
    the tuned threshold (in the model folder) and eval_results, all written aside, then renamed in, the
    results last. A failed write leaves every earlier file as it was. config: run_squad.EvalConfig (where the
    results go, the decoding settings, the threshold, the window settings recorded with a tuned threshold)."""
    v2, output_dir = config.settings.version_2_with_negative, config.output_dir
    try:
        with atomic_io.file_set() as files:
            paths = decoding.write_prediction_files(output_dir, prefix, predictions, decoded.nbest,
                                                    decoded.null_odds if v2 or beam else None, files)
            if results and v2 and squad_metrics.plots_available():
                gold = squad_metrics.gold_answers_from_examples(examples)
                files.write_path(output_dir / f"no_answer_{prefix}.png", lambda tmp: squad_metrics.plot_no_answer(
                    gold, decoded.best_spans, decoded.null_odds, config.threshold, str(tmp)))
            if results and v2 and model_folder is not None:
                output_folder.write_threshold(Path(model_folder), results, prefix, config.predict_path, {
                    "n_best_size": config.settings.n_best_size,
                    "max_answer_length": config.settings.max_answer_length, **config.windows}, files)
            if results:
                output_folder.write_eval_results(output_dir, prefix, results, files)
    except OSError as exc:
        failed = Path(exc.filename) if exc.filename else output_dir
        where = failed.name if failed.parent == output_dir else str(failed)
        outcome = "the previous results are unchanged"
        if isinstance(exc, atomic_io.PartlyReplaced):
            outcome = (f"the set is partly replaced ({', '.join(p.name for p in exc.replaced)} already new, the rest "
                       "the previous evaluation's)")
        raise EvaluationWriteError(f"could not write the evaluation results of step {prefix} to {output_dir} "
                                   f"({where}: {exc.strerror or exc}): {outcome}") from exc
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))

