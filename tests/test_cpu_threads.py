"""The CPU thread rule (process_group.cpu_threads): OMP_NUM_THREADS or MKL_NUM_THREADS when set, else the
physical cores this process may use, fewer under a cgroup CPU quota (v1 or v2, at any level of its cgroup's
path) or when several processes share the machine. Every machine fact is injected: the same on every CPU."""

import pytest
import torch

import run_squad
from cli_helpers import DEMO_DEV
from squad_internals import process_group


def cgroup_tree(tmp_path, files: dict[str, str], own: str = "0::/\n"):
    """A fake /sys/fs/cgroup holding files (path -> text) and a fake /proc/self/cgroup."""
    for name, text in files.items():
        path = tmp_path / "cg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self").write_text(own)
    return {"cgroup_root": str(tmp_path / "cg"), "self_cgroup": str(tmp_path / "self")}


def topology(tmp_path, cores: list[tuple[int, int]]) -> str:
    """A fake /sys whose CPU n sits on (package, core) cores[n], all of them online."""
    for cpu, (package, core) in enumerate(cores):
        folder = tmp_path / "sys" / f"devices/system/cpu/cpu{cpu}/topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    (tmp_path / "sys/devices/system/cpu/online").write_text(f"0-{len(cores) - 1}\n")
    return str(tmp_path / "sys")


def machine(tmp_path, cpus: int = 8, files: dict[str, str] | None = None, own: str = "0::/\n",
            allowed: set[int] | None = None) -> dict:
    """cpu_threads' facts: cpus logical CPUs, one per core, the process allowed on all (or allowed), a cgroup
    tree."""
    return {"cpus": set(range(cpus)) if allowed is None else allowed,
            "sys_root": topology(tmp_path, [(0, n) for n in range(cpus)]), **cgroup_tree(tmp_path, files or {}, own)}


@pytest.mark.parametrize(("files", "own", "expected"), [
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),  # v2 at the root, a container's view
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2 without a quota
    ({"job/cpu.max": "400000 100000\n", "cpu.max": "max 100000\n"}, "0::/job\n", 4.0),  # v2, the process's own group
    ({"job/cpu.max": "max 100000\n", "cpu.max": "200000 100000\n"}, "0::/job\n", 2.0),  # a parent's limit holds
    ({"a/b/cpu.max": "300000 100000\n", "a/cpu.max": "100000 100000\n"}, "0::/a/b/c\n", 1.0),  # the smallest, leaf unread
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu,cpuacct:/\n", 2.0),  # v1
    ({"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
     "3:cpu,cpuacct:/docker/x\n", 0.5),  # v1, nested, under the combined mount name
    ({"cpu/x/cpu.cfs_quota_us": "-1\n", "cpu/x/cpu.cfs_period_us": "100000\n",
      "cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/x\n", 1.0),  # v1 parent
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", None),  # v1 unlimited
    ({"cpu.max": "garbage\n", "cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "0::/\n", 3.0),  # an unreadable v2 file: the v1 one decides
    ({"cpu.max": ""}, "1:name=systemd:/\n0::/\n", None),  # an empty file, a named hierarchy
    ({}, "", None),  # no cgroup files at all (macOS, or cgroups not mounted)
])
def test_cgroup_cpus_reads_the_smallest_quota_on_the_path(tmp_path, files, own, expected):
    assert process_group.cgroup_cpus(**cgroup_tree(tmp_path, files, own)) == expected


def test_mkl_or_omp_num_threads_decides_when_set(tmp_path):
    facts = machine(tmp_path, files={"cpu.max": "300000 100000\n"})
    assert process_group.cpu_threads({"OMP_NUM_THREADS": "5"}, **facts) == (5, "OMP_NUM_THREADS")
    assert process_group.cpu_threads({"OMP_NUM_THREADS": "5,2"}, **facts) == (5, "OMP_NUM_THREADS")  # nested
    assert process_group.cpu_threads({"MKL_NUM_THREADS": "6", "OMP_NUM_THREADS": "5"}, **facts) == (
        6, "MKL_NUM_THREADS")  # torch's order
    assert process_group.cpu_threads({"OMP_NUM_THREADS": "0"}, **facts) == (  # not a count: the rule decides
        3, "a cgroup CPU quota of 3 CPUs; OMP_NUM_THREADS to choose")


def test_the_physical_cores_this_process_may_use_without_a_quota(tmp_path):
    assert process_group.cpu_threads({}, **machine(tmp_path, cpus=8)) == (
        8, "the 8 physical cores this process may use; OMP_NUM_THREADS to choose")


def test_smt_siblings_count_once_and_only_the_cpus_given(tmp_path):
    sys_root = topology(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1)])  # 2 SMT pairs, a 2nd package
    assert process_group.physical_cores({0, 1, 2, 3, 4, 5}, sys_root) == 4
    assert process_group.physical_cores({0, 2}, sys_root) == 1
    assert process_group.physical_cores({0, 1}, str(tmp_path / "absent")) == 2  # no topology: the CPUs


def test_a_quota_below_the_cores_gives_fewer_threads(tmp_path):
    facts = machine(tmp_path, cpus=8, files={"cpu.max": "150000 100000\n"})
    assert process_group.cpu_threads({}, **facts) == (1, "a cgroup CPU quota of 1.5 CPUs; OMP_NUM_THREADS to choose")
    more = machine(tmp_path / "more", cpus=8, files={"cpu.max": "1200000 100000\n"})
    assert process_group.cpu_threads({}, **more)[0] == 8  # a quota above the cores: the cores


def test_processes_sharing_the_machine_share_its_cores_unless_bound(tmp_path):
    assert process_group.cpu_threads({"LOCAL_WORLD_SIZE": "4"}, **machine(tmp_path, cpus=8)) == (
        2, "the 8 physical cores this process may use, shared by 4 processes; OMP_NUM_THREADS to choose")
    bound = machine(tmp_path / "bound", cpus=16, allowed=set(range(8, 16)))  # srun -n2 -c8 bound this task to 8
    assert process_group.cpu_threads({"LOCAL_WORLD_SIZE": "2"}, **bound) == (
        8, "the 8 physical cores this process may use; OMP_NUM_THREADS to choose")
    assert process_group.online_cpus(str(tmp_path / "absent")) is None


def test_use_cpu_threads_sets_torch_and_says_why(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(process_group, "cpu_threads", lambda: (1, "OMP_NUM_THREADS"))
    try:
        assert process_group.use_cpu_threads() == "1 CPU thread: OMP_NUM_THREADS"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_an_in_process_run_gives_its_caller_s_threads_back(monkeypatch, tmp_path, tiny_bert_dir):
    before = torch.get_num_threads()
    monkeypatch.setattr(process_group, "cpu_threads", lambda: (before + 1, "OMP_NUM_THREADS"))
    seen = []
    monkeypatch.setattr(run_squad, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.setattr(run_squad.cli, "check_run_squad_command",
                        lambda argv: process_group.use_cpu_threads() and run_squad.cli.build_parser().parse_args(argv))
    assert run_squad.main(["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(tmp_path / "out"),
                           "--do_eval", "--predict_file", str(DEMO_DEV), "--no_cuda"]) == 0
    assert seen == [before + 1]  # the run computed with the rule's threads
    assert torch.get_num_threads() == before  # and the caller has its own back
