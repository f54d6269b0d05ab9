"""The locks (`make lock`) hold every package the image and `make setup` install, at the versions the
requirements pin, each with hashes; the image installs the lock and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.markers import Marker

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^;\s]+)\s*(?:;(.*))?$")


def pins(*names: str) -> dict[str, str]:
    """name -> version of every pin in the requirement files (and those they include) that applies here."""
    found: dict[str, str] = {}
    for name in names:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("-r "):
                found.update(pins(line[3:].strip()))
            elif match := PIN.match(line):
                package, version, marker = match.groups()
                if marker is None or Marker(marker).evaluate():
                    found[canonical(package)] = version
    return found


def locked(name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every package in a lock."""
    packages: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry)
        if match:
            packages[canonical(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return packages


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize(
    "lock, requirements",
    [
        ("requirements.lock", ("requirements-confluent.txt",)),
        ("requirements-dev.lock", ("requirements-confluent.txt", "requirements-dev.txt")),
    ],
)
def test_each_lock_holds_every_pin_at_its_version_and_every_package_with_hashes(lock, requirements):
    packages = locked(lock)
    wanted = pins(*requirements)
    assert wanted and {name: packages.get(name, ("missing",))[0] for name in wanted} == wanted
    assert all(hashes for _, hashes in packages.values()), [name for name, (_, h) in packages.items() if not h]


def test_the_image_installs_the_runtime_lock_checked_against_its_hashes_and_nothing_else():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"^RUN pip install (.*)$", dockerfile, re.M)
    assert installs == ["--require-hashes --no-deps -r requirements.lock"]
    assert "requirements-dev" not in dockerfile


def test_make_setup_installs_the_dev_lock_checked_against_its_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-cache-dir --require-hashes --no-deps -r requirements-dev.lock" in makefile  # no ~/.cache/pip
    assert not re.search(r"pip install[^\n]*-r requirements[a-z-]*\.txt", makefile)


def test_orjson_is_past_cve_2025_67221():
    version = tuple(int(part) for part in locked("requirements.lock")["orjson"][0].split(".")[:3])
    assert version >= (3, 11, 6)
