"""What a training run reports: loss and throughput per logging window, updates skipped as non-finite,
TensorBoard scalars, and a summary at the end.

Why a module of its own: reporting must never slow the optimizer step it reports on. Everything a step
produces (its loss, whether its update was skipped, the fp16 loss scale) stays on the device, and is read
in one copy on the steps that log, evaluate or save. run_squad.py's loop calls add() and end_step() on
every step and the rest only there.
"""

from __future__ import annotations

import importlib
import logging
import time

import torch

from squad_internals import atomic_io

# Its lines are the command line's own report (the per-window lines, the end-of-training summary), which
# scripts grep as `run_squad: training done`: the command line's logger, not this module's name.
logger = logging.getLogger("run_squad")


class Meter:
    """Since the last log line: summed loss, sequences, real tokens, skipped updates; since the start: totals."""

    def __init__(self, device: torch.device, world_size: int):
        self.device, self.world_size = device, world_size
        self.loss = torch.zeros((), device=device)
        self.steps = self.seqs = self.tokens = self.skipped = 0
        self.total_seqs = self.total_tokens = 0
        self.in_a_row = 0  # consecutive skipped updates, across windows
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (step, skipped, loss scale)
        self.start = self.t0 = time.perf_counter()
        self.last_window: dict = {}

    def restart_window(self) -> None:
        """The window's time starts now (after an evaluation or a checkpoint: the next throughput is training's)."""
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, seqs: int, tokens: int) -> None:
        self.loss += loss
        self.seqs += seqs
        self.tokens += tokens
        self.total_seqs += seqs
        self.total_tokens += tokens

    def end_step(self, step: int, skipped: torch.Tensor, scaler) -> None:
        """Remember (on the device) whether this step's update was skipped, and the fp16 scale it left."""
        # _get_scale_async: the scale tensor itself, without the host copy get_scale() makes.
        scale = scaler._get_scale_async().detach().clone() if scaler is not None else None
        self.pending.append((step, skipped.detach(), scale))
        self.steps += 1

    def skips(self, limit: int) -> tuple[int, int] | None:
        """Log the skipped updates since the last call (one device read); (step, run) when a run of
        consecutive skips reached `limit` there, else None."""
        if not self.pending:
            return None
        flags = torch.stack([s for _, s, _ in self.pending]).tolist()
        scales = torch.stack([c for _, _, c in self.pending]).tolist() if self.pending[0][2] is not None else None
        steps = [step for step, _, _ in self.pending]
        self.pending = []
        for k, (step, skipped) in enumerate(zip(steps, flags, strict=True)):
            self.in_a_row = self.in_a_row + 1 if skipped else 0
            if not skipped:
                continue
            self.skipped += 1
            scale = f"; fp16 loss scale lowered to {scales[k]:g}" if scales is not None else ""
            logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row%s)", step,
                           self.in_a_row, scale)
            if self.in_a_row >= limit:
                return step, self.in_a_row
        return None

    def log(self, writer, scheduler, step: int) -> None:
        """Loss, learning rate and throughput since the last log line (the loss's only host read)."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        values = {
            "loss": self.loss.item() / max(self.steps, 1),
            "lr": scheduler.get_last_lr()[-1],
            "seq_per_s": self.seqs * self.world_size / elapsed,
            "tokens_per_s": self.tokens * self.world_size / elapsed,
            "skipped_nonfinite": self.skipped,
        }
        logger.info("step %d: loss %.4f, lr %.3g, %.1f seq/s, %.0f tokens/s%s", step, values["loss"],
                    values["lr"], values["seq_per_s"], values["tokens_per_s"],
                    f", {values['skipped_nonfinite']} non-finite steps skipped" if values["skipped_nonfinite"] else "")
        write_scalars(writer, "train", values, step)
        self.last_window = values
        self.loss.zero_()
        self.steps = self.seqs = self.tokens = self.skipped = 0
        self.t0 = time.perf_counter()

    def summary(self, steps: int) -> dict:
        """The whole run: wall time, sequences/s, real tokens/s, peak GPU memory (logged once, at the end)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        result = {"optimizer_steps": steps, "seconds": seconds,
                  "seq_per_s": self.total_seqs * self.world_size / seconds,
                  "tokens_per_s": self.total_tokens * self.world_size / seconds, "peak_gpu_gib": peak}
        logger.info("training done: %d optimizer steps in %.1f s, %.1f seq/s, %.0f real tokens/s, peak GPU memory %s",
                    steps, seconds, result["seq_per_s"], result["tokens_per_s"],
                    f"{peak:.2f} GiB" if peak is not None else "n/a (no GPU)")
        return result


def open_tensorboard(output_dir: str):
    """A TensorBoard writer under <output_dir>/runs, or None when tensorboardX is not installed."""
    try:
        tensorboard = importlib.import_module("tensorboardX")  # optional: logs are secondary to the run
    except ImportError:
        logger.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")
        return None
    return tensorboard.SummaryWriter(logdir=f"{output_dir}/runs")


def write_scalars(writer, tag: str, values: dict, step: int) -> None:
    if writer is None or not values:
        return
    for key, value in values.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"{tag}/{key}", value, step)


def close_quietly(writer) -> None:
    """Close the TensorBoard writer; its failure (a full disk) must not hide the error being raised."""
    if writer is None:
        return
    try:
        writer.close()
    except Exception as exc:  # noqa: BLE001 - logs are secondary to the run's own outcome
        logger.warning("could not close the TensorBoard writer: %s", atomic_io.first_line(exc))
