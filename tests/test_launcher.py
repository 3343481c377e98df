"""scripts/mpi_launch.sh builds the launch command for the MPI it finds: --oversubscribe for Open MPI only."""

from __future__ import annotations

import os
import subprocess

import pytest

from launch import ROOT

VERSIONS = {
    "openmpi4": "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/",
    "openmpi5": "mpiexec (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/",
    "mpich": "HYDRA build details:\n    Version:                                 4.1.2\n    Release Date: ...",
}


def launch_command(tmp_path, version_text: str | None, py: str = "true") -> str:
    """The launch array mpi_launch.sh sets, with a stand-in mpiexec printing version_text (None: no mpi4py)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "mpiexec").write_text(f"#!/bin/sh\ncat <<'END'\n{version_text}\nEND\n")
    (fake / "mpiexec").chmod(0o755)
    script = f'py={py}; source scripts/mpi_launch.sh; echo "${{launch[*]}} ranks=$ranks"'
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("flavour, expected", [
    ("openmpi4", "mpiexec -n 2 --oversubscribe true ranks=2"),
    ("openmpi5", "mpiexec -n 2 --oversubscribe true ranks=2"),
    ("mpich", "mpiexec -n 2 true ranks=2"),
])
def test_oversubscribe_only_for_open_mpi(tmp_path, flavour, expected):
    assert launch_command(tmp_path, VERSIONS[flavour]) == expected


def test_one_process_without_mpi4py(tmp_path):
    assert launch_command(tmp_path, VERSIONS["openmpi4"], py="false") == "false ranks=1"
