"""Trace estimators against exact traces of prescribed spectra, with honest standard errors."""

import threading

import array_api_strict
import numpy as np
import pytest

from hessop.comm import Communicator
from hessop.solvers.trace import trace
from hessop.testing import SpectralOperator, geometric_spectrum, low_rank_spectrum, nn_like_spectrum

torch = pytest.importorskip("torch")
import array_api_compat.torch as xtorch  # noqa: E402

NAMESPACES = {"numpy": (None, None), "array_api_strict": (array_api_strict, None), "torch": (xtorch, "cpu")}
METHODS = ["hutchinson", "hutch++", "xtrace"]


_CACHE = {}


def operator(lam, name="numpy", seed=3):
    """A dense ``Q diag(lam) Qᵀ``, built once per spectrum and namespace (Haar ``Q`` is the slow part)."""
    key = (np.asarray(lam).tobytes(), name, seed)
    if key not in _CACHE:
        xp, device = NAMESPACES[name]
        _CACHE[key] = SpectralOperator(lam, seed=seed, xp=xp, device=device)
    return _CACHE[key]


# --- a communicator of threads, to run several "ranks" in one process ---------------------------

class ThreadComm(Communicator):
    """Rank ``rank`` of ``size`` threads; ``allreduce`` sums numpy arrays across the threads.

    ``calls`` counts the array sums, as ``MPIComm.num_allreduce`` does; the
    maximum behind the solvers' argument check is a separate collective, not
    counted.
    """

    def __init__(self, rank, size, slots, barrier, calls):
        self.rank, self.size, self._slots, self._barrier, self.calls = rank, size, slots, barrier, calls

    def _gather(self, x):
        self._slots[self.rank] = np.array(x, dtype=np.float64, copy=True)
        self._barrier.wait()
        parts = list(self._slots)
        self._barrier.wait()
        return parts

    def allreduce(self, x):
        self.calls[self.rank] += 1
        return sum(self._gather(x))

    def allreduce_max(self, x):
        return np.maximum.reduce(self._gather(x))

    def broadcast(self, obj, root=0):
        return obj

    def barrier(self):
        self._barrier.wait()

    def abort(self, code=1):
        raise SystemExit(code)


def run_ranks(size, fn, comm_type=None):
    """``fn(comm)`` on ``size`` thread-ranks; returns the per-rank results and all-reduce counts."""
    comm_type = comm_type or ThreadComm
    slots, barrier, calls = [None] * size, threading.Barrier(size, timeout=60), [0] * size
    results, errors = [None] * size, []

    def work(r):
        try:
            results[r] = fn(comm_type(r, size, slots, barrier, calls))
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, calls


# --- accuracy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("method", METHODS)
def test_estimate_within_its_stderr(name, method):
    lam = nn_like_spectrum(200, seed=1)
    A = operator(lam, name)
    for seed in range(3):
        r = trace(A, method=method, max_matvecs=48, seed=seed)
        assert r.method == method and r.converged and np.isfinite(r.stderr) and r.stderr > 0
        assert abs(r.estimate - lam.sum()) <= 4 * r.stderr
        assert r.num_matvecs == 48 + 2  # budget plus the symmetry probe
        assert r.samples.dtype == np.float64 and r.estimate == pytest.approx(r.samples.mean())


@pytest.mark.parametrize("method", METHODS)
def test_stderr_is_honest_over_seeds(method):
    lam = nn_like_spectrum(200, seed=4)
    A = operator(lam)
    runs = [trace(A, method=method, max_matvecs=30, seed=s, check_symmetric=False) for s in range(30)]
    est = np.array([r.estimate for r in runs])
    reported = np.sqrt(np.mean([r.stderr**2 for r in runs]))
    assert 0.5 < est.std(ddof=1) / reported < 2.0
    assert abs(est.mean() - lam.sum()) < 4 * est.std(ddof=1) / np.sqrt(len(est))  # unbiased


@pytest.mark.parametrize("lam", [low_rank_spectrum(200, rank=20), geometric_spectrum(200, 0.8), nn_like_spectrum(200)],
                         ids=["low-rank", "geometric", "nn-like"])
def test_sketched_estimators_beat_hutchinson(lam):
    A = operator(lam)
    err = {m: np.median([abs(trace(A, method=m, max_matvecs=60, seed=s, check_symmetric=False).estimate - lam.sum())
                         for s in range(8)]) for m in METHODS}
    assert err["xtrace"] < err["hutchinson"] / 5
    assert err["hutch++"] < err["hutchinson"] / 3


def test_exact_on_low_rank():
    lam = low_rank_spectrum(200, rank=5)
    for method in ("hutch++", "xtrace"):
        r = trace(operator(lam), method=method, max_matvecs=30)
        assert r.estimate == pytest.approx(lam.sum(), rel=1e-10) and r.stderr < 1e-8


def test_gaussian_probes_and_confidence_interval():
    lam = nn_like_spectrum(200, seed=2)
    r = trace(operator(lam), method="hutchinson", max_matvecs=40, probe="gaussian", seed=1)
    lo, hi = r.confidence_interval(0.9999)
    assert lo < lam.sum() < hi and hi - lo == pytest.approx(2 * 3.8906 * r.stderr, rel=1e-3)


# --- adaptive mode ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_rtol_stops_when_reached(method):
    lam = nn_like_spectrum(200, seed=1)
    r = trace(operator(lam), method=method, max_matvecs=3000, rtol=0.05)
    assert r.converged and r.stderr <= 0.05 * abs(r.estimate)
    assert r.num_matvecs < 3000 and abs(r.estimate - lam.sum()) <= 4 * r.stderr


@pytest.mark.parametrize("method", METHODS)
def test_rtol_out_of_budget_is_flagged(method):
    lam = nn_like_spectrum(200, seed=1)
    r = trace(operator(lam), method=method, max_matvecs=24, rtol=1e-6)
    assert not r.converged and r.num_matvecs <= 24 + 2 and r.stderr > 1e-6 * abs(r.estimate)


def test_adaptive_xtrace_reuses_products():
    lam = nn_like_spectrum(200, seed=1)
    r = trace(operator(lam), method="xtrace", max_matvecs=200, rtol=1e-9, check_symmetric=False)
    # rounds of 16, 32, 64 test vectors cost 32 + (16 + 32) + (32 + 64) = 176 products;
    # the 24 left buy no larger round (k = 65 would need 1 + 65)
    assert not r.converged and r.num_matvecs == 176 and r.num_probes == 64


# --- probe parallelism -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("rtol", [None, 0.05])
def test_probe_parallel_matches_serial(size, rtol):
    lam = nn_like_spectrum(200, seed=5)
    A = operator(lam)
    serial = trace(A, method="hutchinson", max_matvecs=41, rtol=rtol, seed=7, block_size=4)
    results, calls = run_ranks(size, lambda c: trace(A, method="hutchinson", max_matvecs=41, rtol=rtol, seed=7,
                                                     comm=c, block_size=3))
    for r in results:
        np.testing.assert_allclose(r.samples, serial.samples, rtol=1e-12)
        assert r.estimate == results[0].estimate and r.stderr == results[0].stderr  # identical on every rank
        assert r.num_matvecs == serial.num_matvecs - 2 + 2 * size
    if rtol is None:
        assert calls == [1] * size  # one all-reduce for the whole fixed budget


def test_data_parallel_operator_refuses_probe_comm():
    A = SpectralOperator(nn_like_spectrum(50))
    A.comm = type("TwoRanks", (), {"size": 2, "rank": 0})()
    with pytest.raises(ValueError, match="data-parallel"):
        trace(A, method="hutchinson", comm=object())


def test_comm_only_for_hutchinson():
    with pytest.raises(ValueError, match="hutchinson"):
        trace(operator(nn_like_spectrum(50)), method="xtrace", comm=object())


# --- bad input and interrupts --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_matvecs=0), ValueError, ">= 2"),
    (dict(method="xtrace", max_matvecs=3), ValueError, ">= 4"),
    (dict(method="hutch++", max_matvecs=-5), ValueError, ">= 4"),
    (dict(method="lanczos"), ValueError, "unknown method"),
    (dict(rtol=1.5), ValueError, r"\(0, 1\)"),
    (dict(rtol=0.0), ValueError, r"\(0, 1\)"),
    (dict(probe="sphere"), ValueError, "unknown probe"),
    (dict(seed=-1), TypeError, "seed"),
    (dict(max_matvecs=10.5), TypeError, "int"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        trace(operator(nn_like_spectrum(50)), **{"method": "hutchinson", **kwargs})


class Flaky(SpectralOperator):
    """Returns NaN, or raises KeyboardInterrupt, from its ``fail_at``-th product on."""

    def __init__(self, *args, fail_at=3, failure="nan", **kw):
        super().__init__(*args, **kw)
        self.calls, self.fail_at, self.failure = 0, fail_at, failure

    def apply(self, V):
        self.calls += 1
        if self.calls >= self.fail_at:
            if self.failure == "interrupt":
                raise KeyboardInterrupt
            return super().apply(V) * np.nan
        return super().apply(V)


@pytest.mark.parametrize("method", METHODS)
def test_nan_raises(method):
    with pytest.raises(FloatingPointError, match="NaN"):
        trace(Flaky(nn_like_spectrum(50), fail_at=1), method=method, check_symmetric=False)


def test_interrupt_returns_what_was_gathered():
    A = Flaky(nn_like_spectrum(100), fail_at=4, failure="interrupt")
    r = trace(A, method="hutchinson", max_matvecs=40, block_size=5, check_symmetric=False)
    assert not r.converged and r.num_probes == 15 and np.isfinite(r.stderr)
    A = Flaky(nn_like_spectrum(100), fail_at=3, failure="interrupt")  # during the second adaptive round
    r = trace(A, method="xtrace", max_matvecs=400, rtol=1e-6, check_symmetric=False)
    assert not r.converged and r.num_probes == 16 and r.num_matvecs == 2 * 16 + 16
    with pytest.raises(KeyboardInterrupt):  # nothing finished yet
        trace(Flaky(nn_like_spectrum(100), fail_at=1, failure="interrupt"), method="xtrace", check_symmetric=False)


def test_budget_keyword_renamed():
    """The budget is ``max_matvecs``; the old ``num_matvecs=`` still works, with a DeprecationWarning."""
    import hessop

    A = operator(nn_like_spectrum(50))
    for fn in (hessop.trace, hessop.diagonal):
        new = fn(A, method="hutchinson", max_matvecs=12, seed=4)
        with pytest.warns(DeprecationWarning, match=r"num_matvecs=\.\.\.\) is now .*max_matvecs"):
            old = fn(A, method="hutchinson", num_matvecs=12, seed=4)
        np.testing.assert_array_equal(np.asarray(old.estimate), np.asarray(new.estimate))
        assert old.num_matvecs == new.num_matvecs
        with pytest.raises(TypeError, match="only max_matvecs"):
            fn(A, num_matvecs=12, max_matvecs=12)
    with pytest.raises(ValueError, match="max_matvecs >= 2"):  # error messages speak of the new name
        trace(A, method="hutchinson", max_matvecs=1)


def test_warnings_point_at_the_caller():
    """The @renamed wrapper adds a frame: the estimators' warnings still name the caller's line."""
    import warnings

    A = operator(nn_like_spectrum(50))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace(A, method="hutchinson", max_matvecs=8, rtol=1e-6)
    assert caught and {w.filename for w in caught} == {__file__}
