"""The process group and everything around it: launchers, the restart-safe store, barriers, the agreed
stop signal and each rank's random state.

Why a module of its own: this is the plumbing between run_squad.py and torch.distributed. torchrun,
torch.distributed.launch and Slurm's srun describe the processes in different variables; a torchrun restart
reuses one rendezvous store; a SIGTERM reaches one rank but all must stop at the same step; each rank draws
its own dropout masks, which a resumed run must continue. None of it is about SQuAD or the model.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

from squad_internals import atomic_io, fast_path, packing

logger = logging.getLogger(__name__)


class LaunchError(ValueError):
    """The launcher's variables do not describe a process group (a usage error)."""


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank, world size and device (derived once from the environment)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cpu_group: object = None  # a gloo group for host-side agreement (the stop signal) without touching the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu[007-010,012],cpu1" -> "gpu007" (zero padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def adopt_slurm_variables(env: dict) -> None:
    """srun with one task per GPU: translate Slurm's variables into the ones torch reads (unless set)."""
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    env.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))


def restart_safe_store():
    """The env:// rendezvous store, its keys prefixed with torchrun's restart count.

    torchrun's static rendezvous (--master_port, the default) keeps one TCPStore across restarts and
    torch adds no per-attempt prefix, so a restarted worker can read a dead peer's address from the
    previous attempt and fail with "Connection refused" (seen under --max-restarts on gloo).
    """
    store, rank, world_size = next(torch.distributed.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return torch.distributed.PrefixStore(f"run_squad/attempt-{attempt}/", store), rank, world_size


def setup(local_rank_flag: int, no_cuda: bool) -> Runtime:
    """torchrun (RANK/WORLD_SIZE/LOCAL_RANK), torch.distributed.launch (--local_rank) or Slurm (srun)."""
    env = os.environ
    adopt_slurm_variables(env)
    local_rank = int(env.get("LOCAL_RANK", local_rank_flag))
    world_size = int(env.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not no_cuda
    rank = 0
    if world_size > 1 or local_rank != -1:
        if "RANK" not in env:  # torch.distributed.launch without --use_env
            raise LaunchError("--local_rank given but RANK/WORLD_SIZE are not set: start with torchrun")
        if use_cuda:
            torch.cuda.set_device(max(local_rank, 0))
        store, rank, world_size = restart_safe_store()
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank,
                                             world_size=world_size)
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        cpu_group = torch.distributed.new_group(backend="gloo")
    else:
        world_size, cpu_group = 1, None
    device = torch.device("cuda", max(local_rank, 0)) if use_cuda else torch.device("cpu")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=device, cpu_group=cpu_group)


def device_capabilities(device: torch.device) -> tuple[bool, bool]:
    """(computes bf16 natively, runs flash attention's kernels): compute capability 8.0 and newer for both. Not
    torch.cuda.is_bf16_supported()'s default, which also says yes where bf16 is only emulated (V100, T4)."""
    if device.type != "cuda":
        return False, False
    return torch.cuda.is_bf16_supported(including_emulation=False), packing.flash_capable(device.index)


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The feature by which this CPU computes bf16 natively (fast_path.native_bf16_cpu), "" when it does not: the
    flags Linux reports for it, else (no /proc/cpuinfo: macOS, Windows) what torch's cpuinfo says of AVX512-BF16
    and AMX. What the CPU reports, never its vendor's name."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            # x86 names its features on "flags" lines, ARM on "Features" lines (no bf16 rule for ARM yet)
            flags = next((line.partition(":")[2].split() for line in info if line.startswith(("flags", "Features"))), [])
        return fast_path.native_bf16_cpu(flags)
    except OSError:
        reported = [name for name, probe in (("amx_bf16", "_is_amx_tile_supported"),
                                             ("avx512_bf16", "_is_avx512_bf16_supported"))
                    if getattr(torch.cpu, probe, lambda: False)()]
        return fast_path.native_bf16_cpu(reported)


def cgroup_cpus(cgroup_root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPUs this process's cgroups allow (a CFS quota / period: 1.5 for "150000 100000"), None when no
    quota applies or none can be read: the smallest over the process's own cgroup (named by /proc/self/cgroup)
    and each of its parents up to the root (a container's usual view), cgroup v2's cpu.max and v1's
    cpu.cfs_quota_us / cpu.cfs_period_us alike, since a limit at any level holds below it."""
    try:
        with open(self_cgroup, encoding="utf-8") as own:
            paths = {controllers: path.strip() for _, controllers, path in
                     (line.split(":", 2) for line in own if line.count(":") >= 2)}
    except OSError:
        paths = {}
    v1_path = next((path for names, path in paths.items() if "cpu" in names.split(",")), "/")
    folders = [(f"{cgroup_root}{path}", "v2") for path in _and_parents(paths.get("", "/"))]
    folders += [(f"{cgroup_root}/{mount}{path}", "v1") for mount in ("cpu", "cpu,cpuacct") for path in _and_parents(v1_path)]
    limits = [quota for folder, version in dict.fromkeys(folders)
              if (quota := _cfs_quota(Path(folder), version)) not in (None, False)]
    return min(limits) if limits else None


def _and_parents(path: str) -> list[str]:
    """"/a/b" -> ["/a/b", "/a", ""]: a cgroup path and its parents, the root as ""."""
    parts = [part for part in path.split("/") if part]
    return ["/" + "/".join(parts[:n]) if n else "" for n in range(len(parts), -1, -1)]


def _cfs_quota(folder: Path, version: str) -> float | None | bool:
    """One cgroup folder's CPUs (None: no quota at this level), False when it holds no readable quota."""
    try:
        if version == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota, period = ((folder / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return False


def physical_cores(cpus: set[int], sys_root: str = "/sys") -> int:
    """The physical cores among these logical CPUs (SMT siblings counted once, as torch's own default counts),
    from each CPU's topology in sysfs; the number of CPUs where it cannot be read."""
    try:
        return len({tuple((Path(sys_root, f"devices/system/cpu/cpu{cpu}/topology") / name).read_text().strip()
                          for name in ("physical_package_id", "core_id")) for cpu in cpus}) or len(cpus)
    except OSError:
        return len(cpus)


def online_cpus(sys_root: str = "/sys") -> int | None:
    """The machine's online logical CPUs ("0-63" or "0-3,8-11" in sysfs), None where it cannot be read."""
    try:
        ranges = Path(sys_root, "devices/system/cpu/online").read_text().strip().split(",")
        return sum(int(r.split("-")[-1]) - int(r.split("-")[0]) + 1 for r in ranges if r)
    except (OSError, ValueError):
        return None


def cpu_threads(environ=os.environ, cpus: set[int] | None = None, sys_root: str = "/sys",
                cgroup_root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> tuple[int, str]:
    """The threads for this process's CPU work (torch's intra-op threads) and why: MKL_NUM_THREADS or
    OMP_NUM_THREADS when set, as torch reads them (torchrun sets the second to 1 for several processes on a
    machine); else the physical cores this process may run on (its affinity, cpus when given), fewer where a
    cgroup CPU quota allows fewer (a container given 2 CPUs of a 64-core host would otherwise run 64 threads,
    throttled at every step), shared among the processes of the machine (LOCAL_WORLD_SIZE) unless the process is
    bound to CPUs of its own (srun's binding, taskset). The tokenizer's threads never run beside torch's."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        given = environ.get(name, "").split(",")[0].strip()  # OpenMP's "4,2" nests: the outer count is torch's
        if given.isdigit() and int(given) > 0:
            return int(given), name
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = physical_cores(cpus, sys_root)
    why = f"the {cores} physical cores this process may use"
    quota = cgroup_cpus(cgroup_root, self_cgroup)
    if quota is not None and int(quota) < cores:
        cores, why = max(1, int(quota)), f"a cgroup CPU quota of {quota:g} CPUs"
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()  # processes sharing this machine, unless each is bound
    if local.isdigit() and int(local) > 1 and len(cpus) >= (online_cpus(sys_root) or len(cpus)):
        cores, why = max(1, cores // int(local)), f"{why}, shared by {local} processes"
    return cores, f"{why}; OMP_NUM_THREADS to choose"


def use_cpu_threads() -> str:
    """torch's intra-op threads set by cpu_threads; the phrase the log gives."""
    threads, why = cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return f"{threads} CPU thread{'s' if threads != 1 else ''}: {why}"


def setup_logging(verbose: bool, rank: int) -> None:
    """Timestamps and the rank on every line; rank 0 logs, the others only warnings."""
    logging.basicConfig(
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=(logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING,
        force=True,
    )
    # transformers is chatty at INFO about every file it reads.
    logging.getLogger("transformers").setLevel(logging.WARNING)
    # Its weight-loading and shard-writing bars are for a terminal; in a log file they are noise.
    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()


def start_debugger(server_ip: str, server_port: str) -> None:
    """Classic --server_ip/--server_port remote debugging, through debugpy (the successor of ptvsd)."""
    if not (server_ip and server_port):
        return
    try:
        debugpy = importlib.import_module("debugpy")  # optional: only remote debugging needs it
    except ImportError as exc:
        raise LaunchError("--server_ip/--server_port need the debugpy package (pip install debugpy)") from exc
    debugpy.listen((server_ip, int(server_port)))
    logger.info("Waiting for a debugger to attach on %s:%s", server_ip, server_port)
    debugpy.wait_for_client()


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        torch.distributed.barrier()


def gather_to_main(rt: Runtime, obj) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if not rt.distributed:
        return [obj]
    everything: list = [None] * rt.world_size
    torch.distributed.all_gather_object(everything, obj)
    return everything if rt.is_main else None


def from_main(rt: Runtime, obj):
    """Rank 0's ``obj`` on every rank (a small picklable value), over the host-side group."""
    if not rt.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, group=rt.cpu_group)
    return box[0]


def first_problem(rt: Runtime, problem: str | None) -> str | None:
    """The first rank's problem, on every rank (None when no rank has one): every rank takes the same way."""
    if not rt.distributed:
        return problem
    everything: list = [None] * rt.world_size
    torch.distributed.all_gather_object(everything, problem, group=rt.cpu_group)
    return next((p for p in everything if p is not None), None)


def shutdown(rt: Runtime) -> None:
    if rt.distributed:
        torch.distributed.destroy_process_group()


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its optimizer step, checkpoints and exits with 3.

    Under torchrun the ranks agree without waiting for the GPU: each step starts an asynchronous all-reduce
    of the flag on a host-side (gloo) group and reads the previous step's, which has long finished. All
    ranks therefore stop at the same step, one step after the signal reached any of them. The same all-reduce
    carries a second flag, `eager`: set on a rank whose compilation failed, it reaches every rank at the same
    step (`eager_agreed`), so that all ranks run eagerly from then on.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.signum: int | None = None
        self._previous: dict = {}
        self._pending: tuple | None = None
        self.eager = False  # this rank's compilation failed (set by the training loop)
        self.eager_agreed = False  # some rank's compilation failed, as of the last agreed step

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._pending is not None:
            work, self._pending = self._pending[0], None
            try:
                work.wait()  # every rank started it: finish it before the group is used again
            except Exception as exc:  # noqa: BLE001 - a lost peer must not hide the error being raised
                logger.warning("the stop-signal all-reduce did not finish: %s", atomic_io.first_line(exc))

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        first, self.signum = self.signum is None, signum  # set first: a second signal may run this handler anew
        if first and self.rt.is_main:
            # Said at once, so that a user knows the first Ctrl-C was heard (os.write: no logging lock is taken
            # inside a handler that may have interrupted a log call).
            os.write(2, f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                        "(Ctrl-C again to stop at once)\n".encode())

    def agreed(self) -> bool:
        """Whether all ranks stop now (called once per optimizer step on every rank)."""
        local = self.signum is not None
        if not self.rt.distributed:
            self.eager_agreed = self.eager
            return local
        stop = False
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            stop = bool(flags[0].item() > 0)  # a CPU tensor: reading it waits for no GPU work
            self.eager_agreed = bool(flags[1].item() > 0)
        flags = torch.tensor([1.0 if local else 0.0, 1.0 if self.eager else 0.0])
        work = torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.rt.cpu_group,
                                            async_op=True)
        self._pending = (work, flags)
        return stop


# --------------------------------------------------------------------------------------------
# Random state: seeded once, saved per rank in checkpoints, restored on resume
# --------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    """This process's Python, numpy, torch (and CUDA) generators, as tensors and plain data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(rt: Runtime) -> list[dict]:
    """Every rank's random state (each rank resumes its own dropout masks), on every rank."""
    if not rt.distributed:
        return [rng_state()]
    states: list = [None] * rt.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def restore_rng_states(states: list[dict], rt: Runtime) -> bool:
    """Set this rank's saved state; False when the checkpoint came from another number of processes."""
    set_rng_state(states[rt.rank % len(states)])
    return len(states) == rt.world_size
