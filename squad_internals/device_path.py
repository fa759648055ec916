"""The fast path on this device, the torch side of fast_path.py's rules: the facts they read, gathered from
the device, the config and a resumed checkpoint (choose_path, resumed_packing), and what a choice does to the
model and its arithmetic (torch.compile in place, autocast for the precision, compiled code run eagerly).

Why a module of its own: fast_path.py holds the rules without torch, so that they are tested on any machine;
the preparation of a run, training, the first step tried (path_fallback.py), evaluation and the benchmarks
apply the chosen path through these few functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import utils_squad
from squad_internals import fast_path, modeling_relative, output_folder, process_group


def choose_path(flags: fast_path.PathFlags, device: torch.device, config, remote_code: bool,
                resumed_packed: bool | None = None) -> fast_path.Choice:
    """Packing, precision and attention kernels for this family on this device (fast_path.py's rules)."""
    bf16_gpu, flash_gpu = process_group.device_capabilities(device)
    custom = (remote_code and bool(getattr(config, "auto_map", None))) or bool(getattr(config, "is_decoder", False))
    facts = fast_path.Facts(cuda=device.type == "cuda", bf16_gpu=bf16_gpu, model_type=config.model_type,
                            relative_positions=modeling_relative.is_relative_position_config(config),
                            flash_gpu=flash_gpu, custom_code=custom, resumed_packed=resumed_packed,
                            bf16_cpu=process_group.cpu_bf16() if device.type == "cpu" else "")
    return fast_path.choose(flags, facts)


def resumed_packing(resume_from: Path | None) -> bool | None:
    """Whether the checkpoint being resumed was trained on packed batches (None: none, or not recorded; an
    unreadable record is check_resume's to report)."""
    if resume_from is None:
        return None
    try:
        saved = json.loads((resume_from / output_folder.TRAINING_ARGS).read_text())
    except (OSError, ValueError):
        return None
    value = saved.get("packed", saved.get("packing"))
    return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class Compilation:
    """How torch.compile is called (--torch_compile_backend, --torch_compile_mode) and where its kernels are kept."""

    backend: str = "inductor"
    mode: str | None = None
    kernel_cache: Path | None = None  # None: PyTorch's own (TORCHINDUCTOR_CACHE_DIR, else a folder in /tmp)

    @classmethod
    def from_flags(cls, args) -> Compilation:
        """The kernels are kept beside the default feature cache, so the next run of a sweep reuses them; a
        user's own --features_cache_dir or $TORCHINDUCTOR_CACHE_DIR is not second-guessed."""
        cache = None
        if args.features_cache_dir is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            cache = utils_squad.features_cache_dir(None).parent / "inductor"
        return cls(args.torch_compile_backend, args.torch_compile_mode, cache)


def compile_model(model, compilation: Compilation) -> None:
    """torch.compile in place (parameters, state_dict and save_pretrained stay the model's). A kernel cache that
    cannot be used is warned about once and left to PyTorch's default (compiling never depends on it)."""
    if compilation.kernel_cache is not None and utils_squad.usable_cache_dir(compilation.kernel_cache) is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compilation.kernel_cache))
    model.compile(backend=compilation.backend, mode=compilation.mode)


def amp_context(precision: str, device):
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eager_stance():
    """Compiled code runs eagerly inside (torch.compiler.set_stance, torch >= 2.6 as requirements.txt asks)."""
    return torch.compiler.set_stance("force_eager")

