"""Shared test configuration: one thread per test process, Agg plotting, quick compilers.

The suite runs under pytest-xdist with one worker per core; letting each worker's
torch (and BLAS) also start a thread per core oversubscribes the machine, which
makes small Hessian-vector products tens of times slower without changing a number.

The test problems are tiny, so their time goes to compiling, not to running what was
compiled. XLA compiles every eager JAX operation on a new shape (a Krylov basis that
grows compiles at every step): without LLVM's optimisation passes and with XLA's
older loop emitters it compiles in half the time; the programs do the same float
operations (a sum may run in another order, within every test's tolerance). XLA also shows two
host devices, on which the sharded-JAX test places its parameters in the test process (the other
tests use the first device, JAX's default). Inductor
compiles in this process instead of starting a pool of compile workers per test
process on a machine with one core for each, and takes the CPU's vector instructions
from its flags instead of compiling a probe for each (a compiler that cannot build
them then fails the compiled tests loudly; set TORCHINDUCTOR_VEC_ISA_OK=0 there).
These are defaults: a variable already set in the environment wins.
"""

import gc
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                      "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")


def pytest_configure(config):
    """One torch thread in each process that runs tests (not in xdist's controller, which runs none)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # importing torch here would delay starting the workers by two seconds
    try:
        import torch
    except ImportError:  # the suite's torch tests skip themselves
        pass
    else:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The longest work first, so that neither worker is left with a long test at the end.

    pyproject runs the suite with ``--dist loadgroup --no-loadscope-reorder``: xdist hands each
    worker the next test (or the whole ``xdist_group`` it belongs to) in this order as soon as the
    worker is nearly idle. Tests marked ``slow`` and the groups go first, then the ``mpi`` tests
    (they start processes of their own), then everything else in file order.
    """

    def rank(item) -> int:
        if item.get_closest_marker("slow") or item.get_closest_marker("xdist_group"):
            return 0
        return 1 if item.get_closest_marker("mpi") else 2

    items.sort(key=rank)  # stable: file order within each rank


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave the objects built by the run to the end of the process: with torch, JAX and their compiled
    functions loaded, the garbage collector's passes at interpreter exit take two seconds per process."""
    gc.freeze()


@pytest.fixture(scope="session")
def two_rank_job(tmp_path_factory):
    """One ``mpiexec -n 2`` launch of the 2-rank scripts (``tests/mpi/job.py``): the communicator's collectives,
    faults on one rank, the data-parallel checks, the split solvers, and last the split faults, which end
    the job on purpose.

    Each process pays seconds of start-up (torch, JAX) once instead of once per script. Tests that use this
    fixture or :func:`torchrun_job` are marked ``xdist_group("launches")``, so that one worker runs them all
    after one launch of each.
    """
    from launch import Job, mpi_missing

    if mpi_missing():
        pytest.skip(mpi_missing())
    pytest.importorskip("torch")
    specs = ["comm_basics.py", "faults.py", "hessian.py", "split.py:results", "split.py:faults"]
    return Job(2, specs, tmp_path_factory.mktemp("two_ranks"))


@pytest.fixture(scope="session")
def torchrun_job(tmp_path_factory):
    """One ``torchrun --nproc-per-node 2`` launch (gloo): the data-parallel checks over ``TorchDistComm``
    (``hessian.py``), then the FSDP2 model and ``hessop analyze`` of it (``fsdp.py``, which ends the job with a
    fault on purpose). Its tests are in the ``launches`` group."""
    from launch import Job, torchrun

    pytest.importorskip("torch")
    return Job(2, ["hessian.py:torchrun", "fsdp.py"], tmp_path_factory.mktemp("torchrun"), launcher=torchrun)
