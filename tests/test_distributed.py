"""Communicators: serial semantics in-process, MPI collectives and data-parallel Hessians under mpiexec.

The MPI tests launch the scripts in ``tests/mpi/`` (``tests/launch.py``: 2 ranks through the shared
``two_rank_job`` and ``torchrun_job`` of ``tests/conftest.py``, 3 for the aborts) and compare what every
rank wrote with a one-process run.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from launch import ROOT, mpi_missing, mpiexec, needs_mpi, run_here

from hessop.comm import Communicator
from hessop.distributed import (
    RankDisagreementError,
    SerialComm,
    abort_on_error,
    as_comm,
    check_agree,
    checksum,
    shard,
)


class FakeComm(SerialComm):
    """A communicator pretending to be rank ``rank`` of ``size`` (no collectives beyond identity)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size


# -- serial, in-process --------------------------------------------------------------------------
def test_serial_comm_is_identity_and_as_comm_dispatches():
    comm = as_comm(None)
    x = np.arange(3.0)
    assert isinstance(comm, SerialComm)
    assert comm.allreduce(x) is x and comm.allreduce_scalar(2) == 2.0
    assert comm.broadcast({"a": 1}) == {"a": 1}
    comm.check_agree(x)  # one process always agrees
    assert as_comm(comm) is comm
    with pytest.raises(TypeError, match="mpi4py communicator"):
        as_comm("world")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("how", ["round_robin", "contiguous"])
def test_shard_partitions_a_list_exactly(size, how):
    items = list(range(10))
    parts = [shard(items, FakeComm(r, size), how=how) for r in range(size)]
    assert sorted(sum(parts, [])) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    if how == "contiguous":
        assert sum(parts, []) == items
    else:
        assert parts[1 % size][0] == 1 % size * (size > 1)


def test_shard_one_batch_dataset_and_dataloader():
    x, y = np.arange(14).reshape(7, 2), np.arange(7)
    xs, ys = shard((x, y), FakeComm(1, 3), how="contiguous")
    np.testing.assert_array_equal(ys, [3, 4])
    np.testing.assert_array_equal(xs, x[3:5])

    class Dataset:  # map-style, no slicing
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if not 0 <= i < 5:
                raise IndexError(i)
            return i * 10

    part = shard(Dataset(), FakeComm(0, 2))
    assert len(part) == 3 and list(part) == [0, 20, 40]

    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=3)  # batches of 3, 3, 3, 1
    for how, expect in [("round_robin", [[3, 4, 5], [9]]), ("contiguous", [[6, 7, 8], [9]])]:
        mine = shard(loader, FakeComm(1, 2), how=how)
        got = [b[0].tolist() for b in mine]
        assert got == expect and [b[0].tolist() for b in mine] == expect  # re-iterable


def test_shard_rejects_what_it_cannot_split():
    with pytest.raises(ValueError, match="first dimensions"):
        shard((np.zeros((3, 2)), np.zeros(4)), FakeComm(0, 2))
    with pytest.raises(TypeError, match="one-shot iterator"):
        shard(iter([1, 2]), FakeComm(0, 2))
    with pytest.raises(ValueError, match="how="):
        shard([1, 2], FakeComm(0, 2), how="random")


def test_checksum_sees_values_permutations_lengths_and_nans():
    a = np.arange(5.0)
    assert np.array_equal(checksum(a), checksum(a.copy()))
    assert checksum(a)[4] != checksum(a[::-1])[4]  # permutation: position-weighted sum
    assert checksum(a)[0] != checksum(np.arange(6.0))[0]
    assert checksum(np.array([1.0, np.nan]))[1] == 1
    assert checksum(2.5)[2] == 2.5
    big = np.random.default_rng(0).standard_normal(3 * 2**20 + 5).astype(np.float32)  # several chunks
    wide = big.astype(np.float64)
    weights = np.sin(0.75 * np.arange(big.size) + 0.5)
    np.testing.assert_allclose(checksum(big)[2:], [wide.sum(), wide @ wide, wide @ weights], rtol=1e-12)
    torch = pytest.importorskip("torch")
    assert np.array_equal(checksum(torch.arange(4.0, dtype=torch.bfloat16)), checksum(np.arange(4.0)))


def test_check_agree_with_a_sum_only_communicator_raises_on_every_rank():
    """A communicator implementing sums only checks through the base's maximum: one all-reduce of a table."""
    pytest.importorskip("torch")
    from test_trace import ThreadComm
    from test_trace import run_ranks as run_threads

    class SumOnly(ThreadComm):
        allreduce_max = Communicator.allreduce_max  # the contract's default, built from allreduce

    def outcome(values):
        def rank(comm):
            try:
                check_agree(comm, values[comm.rank], what="weights")
            except RankDisagreementError as e:
                return str(e)
            return "agree"

        return run_threads(2, rank, SumOnly)

    assert outcome([np.ones(3), np.ones(3)]) == (["agree", "agree"], [1, 1])
    said, calls = outcome([np.ones(3), np.zeros(3)])  # rank 0 agrees with itself, rank 1 does not
    assert all("disagree on the weights" in m for m in said) and calls == [1, 1]


@pytest.mark.parametrize("native_max", [True, False])
def test_solver_arguments_are_compared_over_any_communicator(native_max):
    """The argument check uses the contract's maximum, so a communicator of sums only is checked too."""
    pytest.importorskip("torch")
    from test_trace import ThreadComm
    from test_trace import run_ranks as run_threads

    from hessop.solvers.trace import trace
    from hessop.testing import SpectralOperator, nn_like_spectrum

    class SumOnly(ThreadComm):
        allreduce_max = Communicator.allreduce_max

    A = SpectralOperator(nn_like_spectrum(40))
    with pytest.raises(RankDisagreementError, match=r"called trace with different arguments \(seed; rank \d passed"):
        run_threads(2, lambda c: trace(A, method="hutchinson", max_matvecs=8, seed=c.rank, comm=c),
                    ThreadComm if native_max else SumOnly)


def test_as_comm_takes_the_contract_not_a_look_alike():
    """Anything with the methods used to pass; now a communicator subclasses the base, and is told so."""

    class LookAlike:
        rank, size = 0, 1

        def allreduce(self, x):
            return x

        def allreduce_scalar(self, v):
            return float(v)

    with pytest.raises(TypeError, match="subclass of hessop.comm.Communicator"):
        as_comm(LookAlike())
    with pytest.raises(TypeError, match="abstract"):  # the contract is checked when the class is used
        type("Half", (Communicator,), {"allreduce": lambda self, x: x})()
    comm = FakeComm(1, 2)
    assert as_comm(comm) is comm


def test_communicators_import_nothing_above_them():
    """hessop.comm is the bottom layer: its modules import each other and the array helpers, anywhere in them."""
    import ast

    files = sorted((ROOT / "hessop" / "comm").glob("*.py"))
    assert {f.name for f in files} >= {"base.py", "serial.py", "mpi.py", "torch_dist.py"}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert (node.level, node.module) in ((1, "base"), (1, "serial"), (1, "mpi"), (2, "_array")), (
                    f"{f.name} imports {'.' * node.level}{node.module}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(n.split(".")[0] == "hessop" for n in names), f"{f.name} imports {names}"


def test_abort_on_error_with_one_process_lets_the_exception_through():
    with pytest.raises(ValueError, match="boom"):
        with abort_on_error(SerialComm()):
            raise ValueError("boom")

    @abort_on_error(SerialComm())
    def fine():
        return 3

    assert fine() == 3


def test_abort_on_error_gives_the_launcher_time_to_forward_the_traceback(monkeypatch, capsys):
    """The traceback is written, then ``grace`` seconds pass, then the job is aborted."""
    events = []

    class TwoRanks(SerialComm):
        rank, size = 1, 2

        def abort(self, code=1):
            events.append(("abort", code))

    monkeypatch.setattr("hessop.distributed.time.sleep", lambda s: events.append(("sleep", s)))
    with pytest.raises(ValueError):  # the fake abort returns, so the exception goes on
        with abort_on_error(TwoRanks(), code=3, grace=0.25):
            raise ValueError("boom")
    assert events == [("sleep", 0.25), ("abort", 3)]
    err = capsys.readouterr().err
    assert err.startswith("rank 1: Traceback") and "rank 1: ValueError: boom" in err
    with pytest.raises(ValueError, match="grace"):
        abort_on_error(TwoRanks(), grace=-1)


def test_mpi_comm_of_one_process():
    MPI = pytest.importorskip("mpi4py.MPI")
    comm = as_comm(MPI.COMM_SELF)
    x = np.arange(3.0)
    assert (comm.rank, comm.size) == (0, 1)
    assert comm.allreduce(x) is x and comm.allreduce_scalar(1.5) == 1.5
    assert comm.broadcast([1, 2]) == [1, 2]
    comm.check_agree(x)
    assert "size=1" in repr(comm)


# -- under mpiexec -------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")  # one launch shared with other 2-rank scripts (tests/conftest.py)
def test_collectives_on_every_array_kind(two_rank_job):
    ranks = two_rank_job.records("comm_basics")
    for rec in ranks:
        for kind in ("numpy_f64", "numpy_f32", "numpy_f16", "numpy_noncontig", "numpy_int",
                     "torch_f32", "torch_f64_T", "torch_bf16", "jax_f32", "strict"):
            assert rec[kind]["ok"], (rec["rank"], kind, rec[kind])
        assert rec["numpy_input_untouched"]
        assert rec["numpy_f32"]["dtype"] == "float32" and rec["numpy_f16"]["dtype"] == "float16"
        assert rec["torch_f32"]["type"] == "Tensor" and rec["torch_bf16"]["dtype"] == "torch.bfloat16"
        assert rec["jax_f32"]["dtype"] == "float32" and "Cpu" in rec["jax_device"]
        assert rec["jax_hvp"]["type"] == "ArrayImpl" and rec["jax_hvp"]["dtype"] == "float32"
        assert rec["jax_hvp"]["relerr"] < 1e-5  # float32: the sum over shards vs over batches
        assert rec["scalar"] == 0.5 + 1.5
        assert rec["broadcast"] == {"from": 1, "list": [1, 1, 1]}
        scalar, perm, length, tiny = rec["disagree"]
        assert "sum ranges from 0 to 1" in scalar and "position-weighted" in perm
        assert "length ranges from 3 to 4" in length and tiny is not None
    assert ranks[0]["shard_rr"] == [0, 2, 4, 6] and ranks[1]["shard_rr"] == [1, 3, 5]
    assert ranks[0]["shard_contig"] == [0, 1, 2, 3] and ranks[1]["shard_contig"] == [4, 5, 6]
    assert ranks[0]["shard_batch"] == [0, 1, 2] and ranks[1]["shard_batch"] == [3, 4]


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["context", "hook", "default"])
def test_a_failing_rank_ends_the_job_with_its_message(mode):
    """``default``: without abort_on_error, hessop's own hook ends the job (issue 12, item 1)."""
    proc = mpiexec(3, "abort.py", mode, timeout=60)  # a hang would raise TimeoutExpired
    assert proc.returncode != 0
    assert "rank 2: ValueError: batch 17 on rank 2 holds NaN" in proc.stderr
    assert "rank 2: Traceback" in proc.stderr


@needs_mpi
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")
def test_one_ranks_bad_data_or_arguments_fail_on_every_rank(two_rank_job):
    """Issue 12, items 2-4: each case raises on *both* ranks (the script catches it and runs the next); ranks whose
    models were seeded differently are refused. Both ranks then finish the script (their records)."""
    rank0, rank1 = two_rank_job.records("faults")
    expected = {
        "empty_list": ("ValueError", "rank 1 failed while building the Hessian: the data holds no samples"),
        "empty_shard": ("ValueError", "rank 1 failed while building the Hessian: the data holds no samples"),
        "shuffled_on_one_rank": ("RuntimeError", "rank 1 failed while building the Hessian: the data loader yields"),
        "dtype": ("RankDisagreementError", "called hessian with different arguments (dtype;"),
        "different_models": ("RankDisagreementError", "the 2 ranks disagree on the model parameters"),
        "nan_in_first_batch": ("FloatingPointError", "rank 1 failed while building the Hessian: the data holds NaN "
                                                     "or infinite values: the input of batch 0"),
        "nan_in_one_shard": ("FloatingPointError", "rank 1 failed in a product: the hessian-vector product of batch 1"),
        "eigsh_k": ("RankDisagreementError", "called eigsh with different arguments (k;"),
        "eigsh_which": ("RankDisagreementError", "called eigsh with different arguments (which;"),
        "eigsh_tol": ("RankDisagreementError", "called eigsh with different arguments (tol;"),
        "eigsh_budget": ("RankDisagreementError", "called eigsh with different arguments (max_matvecs;"),
        "trace_budget": ("RankDisagreementError", "called trace with different arguments (max_matvecs;"),
        "density_seed": ("RankDisagreementError", "called density with different arguments (seed;"),
        "eigsh_seed_no_symmetry_check": ("RankDisagreementError", "called eigsh with different arguments (seed;"),
    }
    for name, (kind, message) in expected.items():
        for rec in (rank0, rank1):
            got = rec[name]
            assert got is not None and got["type"] == kind, (rec["rank"], name, got)
            assert "check_symmetric=False" not in got["message"]
        assert message in rank0[name]["message"], (name, rank0[name])
    assert "rank 1 passed seed=1" in rank1["eigsh_seed_no_symmetry_check"]["message"]
    assert "rank 0 passed k=2" in rank0["eigsh_k"]["message"]
    assert "same seed or checkpoint" in rank0["different_models"]["message"]
    assert rank0["after"] == rank1["after"]  # the job goes on, every rank alike


def test_the_default_abort_hook_ends_the_job_and_can_be_turned_off(monkeypatch, capsys):
    """The hook that MPIComm installs: abort after the message; not when opted out; collective: rank 0 prints."""
    from hessop import distributed
    from hessop._collective import mark

    events = []

    class TwoRanks(SerialComm):
        size = 2

        def __init__(self, rank):
            self.rank = rank

        def abort(self, code=1):
            events.append(("abort", self.rank, code))

    monkeypatch.setattr("hessop.distributed.time.sleep", lambda s: None)
    monkeypatch.setattr(sys, "excepthook", lambda *a: events.append(("previous",)))
    monkeypatch.setitem(distributed._uncaught, "installed", False)
    monkeypatch.setitem(distributed._uncaught, "enabled", None)
    monkeypatch.delenv(distributed.ABORT_ENV, raising=False)
    distributed.install_default_abort(TwoRanks(1))
    err = ValueError("boom")
    sys.excepthook(ValueError, err, None)
    assert events == [("abort", 1, 1), ("previous",)] and "rank 1: ValueError: boom" in capsys.readouterr().err
    events.clear()
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert events[0] == ("abort", 1, 130) and "rank 1: KeyboardInterrupt" in capsys.readouterr().err
    events.clear()
    sys.excepthook(ValueError, mark(ValueError("on every rank")), None)  # collective: rank 0 prints it
    assert events[0] == ("abort", 1, 1) and capsys.readouterr().err == ""
    events.clear()
    distributed.abort_on_uncaught(False)
    sys.excepthook(ValueError, err, None)
    assert events == [("previous",)]


def test_as_comm_installs_the_abort_hook_for_mpi_of_several_processes(monkeypatch):
    """The hook comes with an MPI communicator of more than one process, whoever built it, and with no other."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from hessop import distributed
    from hessop.comm.mpi import MPIComm

    seen = []
    monkeypatch.setattr(distributed, "install_default_abort", seen.append)
    comm = MPIComm(MPI.COMM_SELF)
    assert as_comm(comm) is comm and seen == []
    comm.size = 2  # as if the job had two processes
    assert as_comm(comm) is comm and seen == [comm]
    as_comm(FakeComm(0, 2))
    assert seen == [comm]


def test_the_abort_hook_is_not_installed_when_opted_out_by_environment(monkeypatch):
    from hessop import distributed

    monkeypatch.setitem(distributed._uncaught, "installed", False)
    monkeypatch.setitem(distributed._uncaught, "enabled", None)
    monkeypatch.setenv(distributed.ABORT_ENV, "0")
    before = sys.excepthook
    distributed.install_default_abort(SerialComm())
    assert sys.excepthook is before and not distributed._uncaught["installed"]


def test_nan_in_the_first_batch_is_named_when_the_operator_is_built():
    torch = pytest.importorskip("torch")
    from hessop.factory import hessian

    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = float("nan")
    model = torch.nn.Linear(3, 2).double()
    with pytest.raises(FloatingPointError, match="the data holds NaN or infinite values: the input of batch 0"):
        hessian(model, torch.nn.CrossEntropyLoss(), [(x, torch.tensor([0, 1, 0, 1]))])


def test_the_symmetry_error_never_advises_switching_the_check_off():
    from hessop.solvers.eigsh import eigsh

    A = np.triu(np.random.default_rng(0).standard_normal((8, 8)))
    with pytest.raises(ValueError, match="not symmetric") as info:
        eigsh(A, k=2)
    assert "check_symmetric=False" not in str(info.value)


# -- a small torch model's Hessian across processes ------------------------------------------------
@pytest.fixture(scope="module")
def serial_hessian(tmp_path_factory):
    """``hessian.py`` run once in this process: the one-process reference every launch meets."""
    pytest.importorskip("torch")
    if mpi_missing():
        pytest.skip(mpi_missing())
    return run_here("hessian.py", tmp_path_factory.mktemp("serial"))


def assert_close(got, want, what: str, rtol: float = 1e-6):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    scale = np.max(np.abs(want)) if want.size else 1.0
    assert np.max(np.abs(got - want), initial=0.0) <= rtol * scale, f"{what}: {got} != {want}"


def assert_token_mean(ranks: list[dict]) -> None:
    """Every rank's operator is the token mean of all three padded batches, whichever shares they held."""
    from test_torch_tokens import PAD, _data, _dense_token_mean, _model

    data = _data()
    expected = _dense_token_mean(_model(), data)
    for r, rec in enumerate(ranks):
        mine = data[r::len(ranks)]  # shard()'s round robin
        assert rec["tokens"]["local"] == sum(float((y != PAD).sum()) for _, y in mine)
        np.testing.assert_allclose(np.array(rec["tokens"]["dense"]), expected, rtol=0, atol=1e-12)


def assert_functions_agree(ranks: list[dict], one: dict) -> None:
    """solve, funm and logdet: the right solution, the same path on every rank, the one-process numbers."""
    D = np.array(one["dense"])
    b = np.random.default_rng(2).standard_normal(D.shape[0])
    x = np.linalg.solve(D + 1e-3 * np.eye(len(b)), b)
    assert one["solve"]["converged"] and one["solve"]["method"] == "cg+minres"  # H + 1e-3 I is indefinite here
    np.testing.assert_allclose(one["solve"]["x"], x, rtol=0, atol=1e-6 * np.linalg.norm(x))
    for r in ranks:
        got = r["solve"]
        assert got["converged"] and got["method"] == one["solve"]["method"]
        # rounding of the sums over shards moves a tight (rtol 1e-9) indefinite solve by a few iterations
        assert abs(got["matvecs"] - one["solve"]["matvecs"]) <= max(2, 0.05 * one["solve"]["matvecs"])
        np.testing.assert_allclose(got["x"], ranks[0]["solve"]["x"], rtol=0, atol=0)  # the ranks agree bitwise
        np.testing.assert_allclose(got["x"], x, rtol=0, atol=1e-6 * np.linalg.norm(x))
        np.testing.assert_allclose(r["funm"], one["funm"], rtol=0, atol=1e-7 * np.linalg.norm(one["funm"]))
        assert r["logdet"][0] == pytest.approx(one["logdet"][0], rel=1e-8)


@needs_mpi
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")  # one worker: the one-process reference and each launch, once
@pytest.mark.parametrize("launcher", ["mpiexec", "torchrun"])
def test_data_parallel_results_equal_the_one_process_results(launcher, serial_hessian, request):
    """2 ranks, 4 + 3 batches of unequal sizes (22 and 28 samples), under mpiexec and under torchrun
    (TorchDistComm on gloo): scripts of the launches tests/conftest.py shares with other checks.

    Each checks the products, estimators, solves and matrix functions of an MLP, and a token mean over
    padded batches of unequal shapes, against the one-process run and bitwise across the ranks.
    """
    job = request.getfixturevalue("torchrun_job" if launcher == "torchrun" else "two_rank_job")
    ranks = job.records("hessian-torchrun" if launcher == "torchrun" else "hessian")
    n = len(ranks)
    assert [r["local_batches"] for r in ranks] == [len(range(7)[r::n]) for r in range(n)]
    keys = ["hvp", "hmm", "loss", "grad", "dense", "arpack", "eigsh", "trace", "diag", "density",
            "probe_trace", "probe_diag", "probe_density"]
    for key in keys:
        for rec in ranks[1:]:
            assert rec[key] == ranks[0][key], f"rank {rec['rank']} differs from rank 0 in {key}"
        got, want = ranks[0][key], serial_hessian[key]
        if key.endswith("density"):  # nodes, weights, smoothed values
            for part, got_part, want_part in zip(("nodes", "weights", "values"), got, want):
                assert_close(got_part, want_part, f"{key} {part}")
        else:
            assert_close(got, want, key)
    exact = np.linalg.eigvalsh(np.asarray(ranks[0]["dense"]))[-3:]
    assert_close(ranks[0]["arpack"], exact, "ARPACK vs dense eigenvalues")
    *top, converged = ranks[0]["eigsh"]
    assert converged
    assert_close(top, exact, "eigsh vs dense eigenvalues")
    assert_functions_agree(ranks, serial_hessian)
    assert_token_mean(ranks)


def test_torch_dist_comm_needs_an_initialised_process_group():
    pytest.importorskip("torch")
    import torch.distributed as dist

    from hessop.comm.torch_dist import TorchDistComm

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        TorchDistComm()


def test_cuda_awareness_is_asked_of_mpi_and_can_be_overridden(monkeypatch):
    MPI = pytest.importorskip("mpi4py.MPI")
    from hessop.comm.mpi import CUDA_AWARE_ENV, MPIComm, cuda_aware

    monkeypatch.setenv(CUDA_AWARE_ENV, "1")
    assert cuda_aware() is True
    monkeypatch.setenv(CUDA_AWARE_ENV, "0")
    assert cuda_aware() is False
    monkeypatch.delenv(CUDA_AWARE_ENV)
    monkeypatch.setattr(MPI, "Query_cuda_support", lambda: True, raising=False)
    assert cuda_aware() is True and MPIComm(MPI.COMM_SELF).cuda_aware is True
    assert MPIComm(MPI.COMM_SELF, cuda_aware=False).cuda_aware is False
