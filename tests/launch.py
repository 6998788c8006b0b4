"""Launching the scripts in ``tests/mpi/`` under ``mpiexec`` or ``torchrun``, one thread per rank, hessop
from this checkout. A launch that hangs raises ``subprocess.TimeoutExpired``, failing the test."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "mpi"
TIMEOUT = 120


def mpi_missing() -> str | None:
    """Why the MPI tests cannot run here, or None."""
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    return None


needs_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                PYTHONPATH=f"{ROOT}{os.pathsep}" + os.environ.get("PYTHONPATH", ""))


def mpiexec(n: int, script: str, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``tests/mpi/<script>`` on ``n`` MPI processes."""
    cmd = ["mpiexec", "-n", str(n), sys.executable, str(SCRIPTS / script), *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def torchrun(n: int, script: str, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``tests/mpi/<script>`` on ``n`` processes of a torch.distributed (gloo) job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           str(SCRIPTS / script), *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def records(out: Path, n: int) -> list[dict | None]:
    """Each rank's JSON record in ``out`` (None where a rank wrote none)."""
    return [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").exists() else None
            for r in range(n)]


def run_ranks(n: int, script: str, tmp_path: Path, *args, launcher=mpiexec) -> list[dict]:
    """Launch, require success, and return each rank's JSON record in rank order."""
    out = tmp_path / f"n{n}"
    out.mkdir()
    proc = launcher(n, script, out, *args)
    assert proc.returncode == 0, f"{launcher.__name__} -n {n} {script} failed:\n{proc.stdout}\n{proc.stderr}"
    return records(out, n)  # type: ignore[return-value]


def run_here(script: str, out: Path, *args) -> dict:
    """Run ``tests/mpi/<script>`` in this process (one rank of MPI's world) and return its record: the
    one-process reference the launches meet, without the seconds of a process's start-up."""
    argv = sys.argv
    sys.argv = [str(SCRIPTS / script), str(out), *map(str, args)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small estimators' calibration warnings
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
    return json.loads((out / "rank0.json").read_text())


class Job:
    """One launch (``mpiexec`` or ``torchrun``) of several scripts through ``tests/mpi/job.py``: each script's
    records by name."""

    def __init__(self, n: int, specs: list[str], out: Path, launcher=mpiexec, timeout: float = 2 * TIMEOUT):
        self.n, self.out = n, out
        self.proc = launcher(n, "job.py", out, *specs, timeout=timeout)

    def records(self, name: str) -> list[dict]:
        """The records of script run ``name`` (``faults``, ``split-results``), requiring one from every rank."""
        got = records(self.out / name, self.n)
        assert all(rec is not None for rec in got), f"{name} wrote no record:\n{self.proc.stdout}\n{self.proc.stderr}"
        return got  # type: ignore[return-value]
