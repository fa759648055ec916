"""What training keeps beside the model's weights, and a checkpoint with them: AdamW over the model's
parameter groups, its learning-rate schedule and (--fp16) the gradient scaler, built from the optimization
flags; and, when a run resumes, their state, its position in the data and every rank's random state given back.

Why a module of its own: run_squad.train() reads as its loop; how the optimizer is built (parameter groups,
layer-wise decay, the fused kernel that skips a non-finite update on the device), which schedule, and what a
checkpoint keeps of them and gives back are one concern, read apart from the loop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from squad_internals import checkpoints, process_group, qa_model

# Its lines are the command line's own report (the parameter groups, the resumed position; a test reads them
# there): the command line's logger, not this module's name.
logger = logging.getLogger("run_squad")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, its learning-rate schedule and gradient clipping (the optimization flags)."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    layerwise_lr_decay: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    lr_end: float = 1e-7
    lr_power: float = 1.0
    max_grad_norm: float = 1.0  # 0: no clipping
    fp16_opt_level: str = "O1"  # accepted for apex scripts, only logged

    @property
    def clip_norm(self) -> float:
        return self.max_grad_norm if self.max_grad_norm > 0 else float("inf")  # 0: no clipping

    @classmethod
    def from_flags(cls, args) -> OptimConfig:
        """Every field is the flag of the same name (the defaults above are the parser's: a test ties them)."""
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})


def build_optimizer(model, optim: OptimConfig):
    """AdamW, fused: one kernel for the whole update, which also skips it on the device when told found_inf."""
    groups = qa_model.parameter_groups(model, optim.learning_rate, optim.weight_decay, optim.layerwise_lr_decay)
    logger.info("%s", parameter_groups_line(groups, optim.layerwise_lr_decay))
    for g in groups:  # the detail few readers need: --verbose_logging
        depth = f" (depth {g['depth']})" if optim.layerwise_lr_decay < 1.0 else ""
        logger.debug("parameter group%s: lr %.3g, weight decay %g, %d tensors, e.g. %s",
                     depth, g["lr"], g["weight_decay"], len(g["params"]), g["names"][0])
    params = [{k: v for k, v in g.items() if k not in ("names", "depth")} for g in groups]
    return torch.optim.AdamW(params, lr=optim.learning_rate, betas=(optim.adam_beta1, optim.adam_beta2),
                             eps=optim.adam_epsilon, fused=True)


def parameter_groups_line(groups: list[dict], layerwise_lr_decay: float) -> str:
    """The optimizer's parameter groups in one line: how many, the learning-rate range, which decay."""
    rates = [g["lr"] for g in groups]
    lr = f"lr {rates[0]:.3g}"
    if min(rates) != max(rates):
        lr = f"lr {min(rates):.3g} to {max(rates):.3g} (layer-wise decay {layerwise_lr_decay:g})"
    tensors = sum(len(g["params"]) for g in groups)
    decayed = [g for g in groups if g["weight_decay"]]
    decay = "no weight decay"
    if decayed:
        decay = (f"weight decay {decayed[0]['weight_decay']:g} on {sum(len(g['params']) for g in decayed)} "
                 "tensors, none on biases and norms")
    return f"{len(groups)} parameter groups of {tensors} tensors: {lr}, {decay}"


def build_scheduler(optimizer, optim: OptimConfig, total_steps: int):
    """The learning rate as a function of the optimizer step (skipped updates count as steps)."""
    schedules = transformers.optimization
    warmup = optim.warmup_steps or int(math.ceil(optim.warmup_ratio * total_steps))
    if optim.lr_scheduler_type == "linear":
        return schedules.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if optim.lr_scheduler_type == "polynomial":
        return schedules.get_polynomial_decay_schedule_with_warmup(
            optimizer, warmup, total_steps, lr_end=optim.lr_end, power=optim.lr_power)
    if optim.lr_scheduler_type == "cosine":
        return schedules.get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return schedules.get_constant_schedule_with_warmup(optimizer, warmup)


@dataclass
class Optimization:
    """The optimizer, its schedule and (--fp16) the gradient scaler: what a checkpoint saves of them."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def start_optimization(optim: OptimConfig, precision: str, model, rt, total_steps: int) -> Optimization:
    optimizer = build_optimizer(model, optim)
    scaler = torch.amp.GradScaler(rt.device.type) if precision == "fp16" else None
    if precision == "fp16":
        logger.info("--fp16: torch.amp with a gradient scaler (--fp16_opt_level %s is ignored: apex is not used)",
                    optim.fp16_opt_level)
    return Optimization(optimizer, build_scheduler(optimizer, optim, total_steps), scaler)


def resumed_position(resume_from: Path | None) -> dict:
    """Where in the data training starts: the checkpoint's position (its tensors mapped, not read), or the
    beginning."""
    if resume_from is None:
        return {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
    return dict(checkpoints.load_trainer_state(resume_from, mmap=True)["position"])


def restore_position(resume_from: Path | None, optimization: Optimization, rt) -> dict:
    """The position in the data to continue from, with the optimizer and every rank's random state."""
    if resume_from is None:
        return resumed_position(None)
    state = checkpoints.load_trainer_state(resume_from)
    optimization.load(state)
    position = dict(state["position"])
    if not process_group.restore_rng_states(state["rng"], rt):
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: dropout masks will differ "
                       "from an unbroken run", len(state["rng"]), rt.world_size)
    logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", resume_from,
                position["global_step"], position["epoch"], position["step_in_epoch"])
    return position

