"""Per-thread CPU from /proc for a process in a container, matched to py-spy's thread ids.

py-spy reports `os_thread_id` as the container knows the thread (Python >= 3.11 stores it in each
thread state); the host's /proc names the same thread by its host tid. The sample keys threads by
the container's tid and keeps the host's, so the analysis finds the CPU time of every thread.
"""

from __future__ import annotations

from pathlib import Path

from repro.capture import procfs

STAT = "{tid} (python3) S 1 1 1 0 -1 4194560 100 0 0 0 {ut} {st} 0 0 20 0 3 0 100 1000 10 1 1 1 1 1 1 0 0 0 0 0 0 17 1"


def fake_proc(root: Path, pid: int, threads: dict[int, int | None], self_ns: str, ns: str) -> Path:
    """/proc/<pid> with tasks {host tid: tid in the container or None (same namespace)}."""
    proc = root / "proc"
    d = proc / str(pid)
    inner = threads[pid]
    (d / "ns").mkdir(parents=True)
    (d / "ns" / "pid").symlink_to(f"pid:[{ns}]")
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "pid").symlink_to(f"pid:[{self_ns}]")
    (d / "status").write_text(f"Name:\tpython3\nNSpid:\t{pid}" + (f"\t{inner}" if inner else "") + "\n")
    for host_tid, ns_tid in threads.items():
        t = d / "task" / str(host_tid)
        t.mkdir(parents=True)
        (t / "stat").write_text(STAT.format(tid=host_tid, ut=250, st=50))
        (t / "wchan").write_text("do_select")
        (t / "status").write_text(f"Name:\tpython3\nNSpid:\t{host_tid}" + (f"\t{ns_tid}" if ns_tid else "") + "\n")
    return proc


def test_threads_of_a_containers_process_are_keyed_by_their_tid_in_the_container(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, {4242: 7, 4250: 15, 4251: 16}, self_ns="1", ns="2")
    out = procfs.threads(4242, proc)
    assert out["ns_pid"] == 7
    assert set(out["threads"]) == {"7", "15", "16"}
    assert out["threads"]["15"]["host_tid"] == 4250
    assert out["threads"]["7"]["cpu"] == round(300 / procfs.CLK_TCK, 3) and out["threads"]["7"]["state"] == "S"
    assert procfs.in_other_pid_namespace(4242, proc) and procfs.nspid(4242, proc) == 7


def test_threads_of_a_process_of_this_namespace_keep_their_tids(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 300, {300: None, 301: None}, self_ns="1", ns="1")
    out = procfs.threads(300, proc)
    assert "ns_pid" not in out and set(out["threads"]) == {"300", "301"}
    assert "host_tid" not in out["threads"]["301"]
    assert not procfs.in_other_pid_namespace(300, proc)
