"""The CPU thread rule (process_group.cpu_threads): OMP_NUM_THREADS when set, else the cores this process may
use, fewer under a cgroup CPU quota (v1 or v2) or when several processes share the machine."""

import os

import pytest

from squad_internals import process_group

CORES = len(os.sched_getaffinity(0))


def cgroup_tree(tmp_path, files: dict[str, str], own: str = "0::/\n"):
    """A fake /sys/fs/cgroup holding files (path -> text) and a fake /proc/self/cgroup."""
    for name, text in files.items():
        path = tmp_path / "cg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self").write_text(own)
    return {"cgroup_root": str(tmp_path / "cg"), "self_cgroup": str(tmp_path / "self")}


@pytest.mark.parametrize(("files", "own", "expected"), [
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),  # v2 at the root, a container's view
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2 without a quota
    ({"job/cpu.max": "400000 100000\n", "cpu.max": "max 100000\n"}, "0::/job\n", 4.0),  # v2, the process's own group
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu,cpuacct:/\n", 2.0),  # v1
    ({"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
     "3:cpu,cpuacct:/docker/x\n", 0.5),  # v1, nested, under the combined mount name
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", None),  # v1 unlimited
    ({"cpu.max": "garbage\n", "cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "0::/\n", 3.0),  # an unreadable v2 file: the v1 one decides
    ({}, "", None),  # no cgroup files at all (macOS, or cgroups not mounted)
])
def test_cgroup_cpus_reads_the_quota_of_v1_and_v2(tmp_path, files, own, expected):
    assert process_group.cgroup_cpus(**cgroup_tree(tmp_path, files, own)) == expected


def test_omp_num_threads_decides_when_set(tmp_path):
    where = cgroup_tree(tmp_path, {"cpu.max": "100000 100000\n"})
    assert process_group.cpu_threads({"OMP_NUM_THREADS": "3"}, **where) == (3, "OMP_NUM_THREADS")


def test_the_cores_this_process_may_use_without_a_quota(tmp_path):
    threads, why = process_group.cpu_threads({"OMP_NUM_THREADS": ""}, **cgroup_tree(tmp_path, {}))
    assert threads == CORES
    assert why == f"the {CORES} cores this process may use; OMP_NUM_THREADS to choose"


@pytest.mark.skipif(CORES < 2, reason="needs 2 cores to show a quota below them")
def test_a_quota_below_the_cores_gives_fewer_threads(tmp_path):
    threads, why = process_group.cpu_threads({}, **cgroup_tree(tmp_path, {"cpu.max": "150000 100000\n"}))
    assert (threads, why) == (1, "this cgroup's CPU quota, 1.5 CPUs; OMP_NUM_THREADS to choose")
    more = cgroup_tree(tmp_path / "more", {"cpu.max": f"{100000 * (CORES + 4)} 100000\n"})
    assert process_group.cpu_threads({}, **more)[0] == CORES  # a quota above the cores: the cores


def test_processes_sharing_the_machine_share_its_cores(tmp_path):
    threads, why = process_group.cpu_threads({"LOCAL_WORLD_SIZE": "2"}, **cgroup_tree(tmp_path, {}))
    assert threads == max(1, CORES // 2)
    assert "shared by 2 processes" in why


def test_use_cpu_threads_sets_torch_and_says_why(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(process_group, "cpu_threads", lambda: (1, "OMP_NUM_THREADS"))
    try:
        assert process_group.use_cpu_threads() == "1 CPU thread: OMP_NUM_THREADS"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
