"""Memory of a process and its children, as the tests and the benchmark report it."""

from __future__ import annotations

from pathlib import Path


def tree_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Sum of `field` (VmRSS now, or VmHWM: each process's own peak) over pid and its descendants, in MB.

    The processor produces from a child process, so its footprint is the two together.
    """
    return sum(_status_kb(member, field) for member in _tree(pid)) / 1024


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may hold spaces; the parent pid is the second field after it.
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    members, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        members.extend(frontier)
    return members


def _status_kb(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split(f"{field}:")[1].split()[0]) if f"{field}:" in status else 0
