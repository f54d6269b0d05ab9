"""Memory of a process and its children, as the tests and the benchmark report it."""

from __future__ import annotations

from pathlib import Path

import psutil


def tree_rss_mb(pid: int) -> float:
    """Resident memory of pid and its descendants now, in MB (kafka-python's output process counts too)."""
    return sum(_each(pid, lambda process: process.memory_info().rss)) / 2**20


def tree_peak_rss_mb(pid: int) -> float:
    """The sum of each process's own peak resident memory, in MB.

    psutil does not report the peak (VmHWM), so it is read from /proc/<pid>/status.
    """
    return sum(_each(pid, lambda process: _status_kb(process.pid, "VmHWM") * 1024)) / 2**20


def _each(pid: int, measure) -> list[int]:
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    values = []
    for process in members:
        try:
            values.append(measure(process))
        except (psutil.NoSuchProcess, OSError):
            continue  # exited while we looked
    return values


def _status_kb(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) if f"{field}:" in status else 0
