"""Operators whose vectors are split across processes (issue 21, item 1 and 4).

In-process: the layout, the rank-count independent random draws, the reductions of
:class:`~hessop.solvers._linear_map.LinearMap`, and the refusal of every host path. Under
``mpiexec`` (``tests/mpi/split.py``): every solver gives the same numbers on 1, 2 and 4
ranks (uneven rows on 4) and the truth, and faults end the job or fail on every rank.
"""

import json
from pathlib import Path

import array_api_compat
import numpy as np
import pytest
import scipy.sparse.linalg
from launch import needs_mpi, run_here, run_ranks

import hessop
from hessop._array import SPLIT_CHUNK, random_at, random_rows
from hessop.comm.base import Communicator
from hessop.solvers._linear_map import as_linear_map
from hessop.split import RowSplit
from hessop.testing import SpectralOperator, SplitSpectralOperator, nn_like_spectrum

ROOT = Path(__file__).resolve().parents[1]


class FakeRank(Communicator):
    """Rank ``rank`` of ``size`` for layout arithmetic only (its sums are its own)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def allreduce(self, x):
        return np.full_like(x, np.max(x))  # as if every rank held the same row count (from_rows)

    def broadcast(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)


def test_even_split_tiles_the_rows_and_from_rows_sums_the_counts():
    blocks = [RowSplit.even(10, FakeRank(r, 4)) for r in range(4)]
    assert [(b.offset, b.rows) for b in blocks] == [(0, 3), (3, 3), (6, 2), (8, 2)]
    s = RowSplit.from_rows(5, FakeRank(2, 3))  # each rank 5 rows
    assert (s.offset, s.rows, s.n) == (10, 5, 15)
    v = np.arange(10.0)
    assert blocks[2].scatter(v).tolist() == [6.0, 7.0]
    serial = RowSplit.even(10, None)
    assert np.array_equal(serial.gather(v), v)


@pytest.mark.parametrize("cols", [None, 3])
def test_a_split_draw_is_the_whole_draw_for_any_number_of_ranks(cols):
    n = 2 * SPLIT_CHUNK + 17  # crosses chunk boundaries
    whole = random_rows([5, 1], n, 0, n, cols, "rademacher")
    picked = np.random.default_rng(0).permutation(n)[:500]  # a layout by index (FSDP2: a piece of every parameter)
    assert np.array_equal(random_at([5, 1], n, picked, cols, "rademacher"), whole[picked])
    for cuts in ([0, n], [0, 11, n], [0, SPLIT_CHUNK - 1, SPLIT_CHUNK + 3, n - 2, n]):
        parts = [random_rows([5, 1], n, a, b, cols, "rademacher") for a, b in zip(cuts[:-1], cuts[1:])]
        assert np.array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(random_rows([5, 2], n, 0, n, cols), random_rows([5, 1], n, 0, n, cols))


def test_a_layout_by_index_cuts_and_draws_whole_vectors_by_position():
    from hessop.solvers._linear_map import LinearMap

    xp = array_api_compat.array_namespace(np.zeros(1))
    split = RowSplit(FakeRank(1, 2), rows=3, offset=5, n=10, index=np.array([9, 0, 4]))
    lm = LinearMap(lambda V: V, 10, xp, xp.float64, "cpu", split=split)
    assert lm.vector(np.arange(10.0)).tolist() == [9.0, 0.0, 4.0] and lm.zeros((10, 2)).shape == (3, 2)
    key = int(np.random.default_rng(4).integers(2**63))
    assert np.array_equal(lm.random(np.random.default_rng(4), (10,)), random_rows([key], 10, 0, 10, None)[[9, 0, 4]])
    assert split.scatter(np.arange(10.0)).tolist() == [9.0, 0.0, 4.0]


def test_tsqr_of_a_split_map_is_orthonormal_even_for_a_rank_deficient_block():
    lm = as_linear_map(SplitSpectralOperator(np.arange(1.0, 41.0)), check_symmetric=False)
    g = np.random.default_rng(0)
    Y = g.standard_normal((40, 3)) @ g.standard_normal((3, 6))  # rank 3 of 6 columns
    Y[:, 0] *= 1e6
    Q, R = lm.qr(Y)
    assert np.abs(Q.T @ Q - np.eye(6)).max() < 1e-12
    assert np.abs(Q @ R - Y).max() < 1e-8 * np.abs(Y).max()
    assert np.allclose(np.triu(R), R)


def test_a_split_operator_on_one_rank_gives_the_solvers_answers():
    lam = nn_like_spectrum(80, num_outliers=5, seed=2)
    A = SplitSpectralOperator(lam, seed=1)
    r = hessop.eigsh(A, k=3)
    assert r.all_converged and np.allclose(r.eigenvalues, lam[::-1][:3], atol=1e-10)
    t = hessop.trace(A, max_matvecs=40)
    assert abs(t.estimate - lam.sum()) < 3 * t.stderr


def test_the_block_spectrum_of_a_small_split_block_goes_through_the_solvers():
    from hessop.analysis.spectrum import block_spectrum

    lam = np.linspace(-1.0, 4.0, 30)
    got = block_spectrum(SplitSpectralOperator(lam), k=2, trace_max_matvecs=30, density_steps=10)
    assert not got.exact and np.allclose(got.eigenvalues, lam[::-1][:2], atol=1e-8)


def test_every_host_path_of_a_split_operator_refuses_with_the_solver_to_use():
    A = SplitSpectralOperator(np.arange(1.0, 21.0))
    for attempt in (lambda: A @ np.ones(20), lambda: A.matmat(np.ones((20, 2))), lambda: A.dot(np.ones(20)),
                    lambda: A.to_dense(), lambda: scipy.sparse.linalg.eigsh(A, k=2), lambda: A.rmatvec(np.ones(20))):
        with pytest.raises(TypeError, match="use hessop's solvers \\(hessop.eigsh"):
            attempt()
    with pytest.raises(ValueError, match="this rank's rows"):
        A.apply(np.ones(21))


def test_unsplit_maps_keep_their_draws_and_reductions():
    """The owner of reductions changes nothing for an ordinary operator: same probes, same numbers."""
    A = SpectralOperator(np.arange(1.0, 31.0), seed=0)
    lm = as_linear_map(A, check_symmetric=False)
    assert lm.split is None and lm.rows == 30
    drawn = lm.random(np.random.default_rng(3), (30, 2))
    assert np.array_equal(drawn, np.random.default_rng(3).standard_normal((30, 2)))
    X = lm.random(1, (30, 4))
    assert np.array_equal(lm.inner(X, X), X.T @ X) and float(lm.norm(X[:, 0])) == np.linalg.norm(X[:, 0])
    assert lm.qr(X)[0].shape == (30, 4)


# -- under mpiexec -------------------------------------------------------------------------------
def _flat(value):
    if isinstance(value, dict):
        return np.concatenate([_flat(v) for k, v in sorted(value.items()) if k not in ("local_rows", "num_matvecs")])
    return np.asarray(value, dtype=float).ravel()


@needs_mpi
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")  # the 2-rank run shares a launch with other scripts (tests/conftest.py)
def test_every_solver_gives_the_same_numbers_on_one_two_and_four_ranks(tmp_path, two_rank_job):
    one = run_here("split.py", tmp_path, "results")  # one rank: this process
    runs = {2: two_rank_job.records("split-results"), 4: run_ranks(4, "split.py", tmp_path, "results", "quick")}
    lam = nn_like_spectrum(90, num_outliers=6, null_fraction=0.3, seed=1)
    for method in ("thick-restart", "lanczos", "block"):
        assert np.allclose(one[method]["eigenvalues"], lam[::-1][:4], rtol=0, atol=1e-9)
        assert all(one[method]["converged"])
        assert np.allclose(one[method]["overlap"], 1.0, atol=1e-6)
    assert np.allclose(one["power"], lam[::-1][:2], atol=1e-4)
    for method in ("xtrace", "hutch++", "hutchinson"):
        estimate, stderr = one["trace_" + method]
        assert abs(estimate - lam.sum()) < 3 * stderr, method
    Q = SplitSpectralOperator(lam, seed=3).eigenvectors()
    b = np.random.default_rng(8).standard_normal(90)
    assert np.allclose(one["solve"], Q @ ((Q.T @ b) / (lam + 1.0)), atol=1e-7)  # split dots in CG/MINRES
    assert np.allclose(one["funm"], Q @ (np.exp(lam) * (Q.T @ b)), rtol=1e-6, atol=1e-6 * np.exp(lam.max()))
    for n in (2, 4):
        assert [rec["rows"] for rec in runs[n]] == ([45, 45] if n == 2 else [7, 28, 28, 27])
        for rec in runs[n]:
            assert rec["thick-restart"]["local_rows"] == rec["rows"] < 90  # eigenvectors stay split
            assert "45 of the 90 rows" in rec["host"] or "of the 90 rows" in rec["host"]
            for key in rec:
                if key in ("rank", "rows", "offset", "host"):
                    continue
                a, b = _flat(one[key]), _flat(rec[key])
                assert np.all(np.isfinite(a)), key
                assert a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-9), (n, rec["rank"], key)


@needs_mpi
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")
def test_split_faults_fail_on_every_rank_or_end_the_job(two_rank_job):
    """The shared 2-rank job's last script: argument and layout disagreements raise on every rank, then a
    failing product on rank 1 ends the job (a hang would have raised TimeoutExpired)."""
    proc = two_rank_job.proc
    assert proc.returncode != 0
    assert "ValueError: rank 1 lost its shard in product 5" in proc.stderr
    for rec in two_rank_job.records("split-faults"):  # different k on the two ranks: both raised before any product
        assert rec["args"][0] == "RankDisagreementError" and "(k;" in rec["args"][1]
        assert rec["layout"][0] == "RankDisagreementError" and "whole length n" in rec["layout"][1]
        kind, message = rec["bad_rows"]
        assert kind == "ValueError" and "add up to 92, not to the whole length n = 90" in message


@pytest.mark.slow
@pytest.mark.xdist_group("jax")  # this worker's JAX, with the two host devices tests/conftest.py asks XLA for
def test_jax_parameters_sharded_over_two_devices_give_the_dense_top_five_with_sharded_eigenvectors():
    """Issue 21, item 3: was an IndivisibleError placing a small host array with the vector's sharding."""
    pytest.importorskip("jax")
    import jax
    import jax.flatten_util
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    if len(jax.devices()) < 2:
        pytest.skip("needs two JAX devices: XLA_FLAGS was set without --xla_force_host_platform_device_count=2")
    jax.config.update("jax_enable_x64", True)
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    g = np.random.default_rng(0)
    plain = {"w1": jnp.asarray(g.standard_normal((4, 6))), "b1": jnp.asarray(0.1 * g.standard_normal(6)),
             "w2": jnp.asarray(g.standard_normal((6, 2)))}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, P("d"))) for k, v in plain.items()}
    data = [(jnp.asarray(g.standard_normal((20, 4))), jnp.asarray(g.standard_normal((20, 2))))]

    def loss(p, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    flat, unravel = jax.flatten_util.ravel_pytree(plain)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), data[0]))(flat))
    traces = {}
    with pytest.warns(RuntimeWarning, match="rests on 6 samples"):  # 16 products: a rough error bar, said so
        for name, params in (("plain", plain), ("sharded", sharded)):
            traces[name] = hessop.trace(hessop.hessian(loss, params, data), method="hutch++", max_matvecs=16,
                                        seed=1).estimate
    r = hessop.eigsh(hessop.hessian(loss, sharded, data), k=5)
    X = r.eigenvectors
    assert r.all_converged
    assert np.allclose(r.eigenvalues, np.sort(np.linalg.eigvalsh(dense))[::-1][:5], rtol=0, atol=1e-8)
    assert len(X.sharding.device_set) == 2 and sorted(s.data.shape[0] for s in X.addressable_shards) == [21, 21]
    assert abs(traces["sharded"] - traces["plain"]) < 1e-10 * abs(traces["plain"])  # same seed, same numbers


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.xdist_group("launches")  # the launch is shared with the data-parallel checks (tests/conftest.py)
def test_an_fsdp2_model_on_two_gloo_ranks_gives_the_dense_hessians_eigenpairs_and_trace(torchrun_job):
    """Issue 21's done-when check (items 2 and 6): float64 MLP with uneven shards, each rank its data (26 and 14
    samples), through the library and through ``hessop analyze`` in the same launch (its report and its resume).

    The job ends with a fault on purpose (item 5): rank 1 fails in a product and torchrun ends the job.
    """
    proc = torchrun_job.proc  # a hang would have raised TimeoutExpired
    assert proc.returncode != 0 and "ValueError: rank 1 lost its shard in a product" in proc.stdout + proc.stderr
    ranks = torchrun_job.records("fsdp")
    out = torchrun_job.out / "fsdp"
    for rec in ranks:
        n = rec["n"]
        assert rec["split"] and rec["shape"] == [n, n] and rec["rows"] < n
        assert rec["product_error"] < 1e-7  # central differences of FSDP's gradients against the dense Hessian
        estimate = rec["product_error_estimate"]  # the first product's measurement, the same on every rank
        assert 0 < estimate < 1e-6 and rec["product_error_2norm"] < 30 * estimate
        assert abs(rec["loss"][0] - rec["loss"][1]) < 1e-12 and rec["gradient_error"] < 1e-12  # weights exact
        assert abs(rec["loss_at"][0] - rec["loss_at"][1]) < 1e-12  # the loss at shifted shards
        assert rec["restored"] == [True, True]  # and the shards put back bit for bit, even after a Ctrl-C
        assert "loss_at takes this rank's" in rec["loss_at_shape"]  # one rank's wrong shape: every rank raises
        assert "use hessop's solvers" in rec["host"]
        assert "H.restrict(name)" in rec["blocks"]
        size, error, unsplit = rec["ddp"]
        assert size == 2 and error < 1e-12 and unsplit  # DDP unwrapped: data parallel over its group
        assert rec["cli_codes"] == [0, 0]  # hessop analyze, then its resume
    assert ranks[0]["product_error_estimate"] == ranks[1]["product_error_estimate"]
    assert ranks[0]["cli_numbers"] == ranks[1]["cli_numbers"]  # every rank computed the same numbers, bit for bit
    _check_the_fsdp2_report(out, ranks[0])
    _check_hsdp(ranks)


def _check_hsdp(ranks):
    """The same model and data on the 2-D (HSDP) meshes (2, 1) and (1, 2): the dense numbers, each row once."""
    n, truth, trace = ranks[0]["n"], ranks[0]["truth"], ranks[0]["trace"]
    replicated, sharded = zip(*(rec["hsdp"] for rec in ranks))  # per mesh: each rank's record
    for mesh in (*replicated, *sharded):
        assert mesh["ranks"] == 2 and mesh["product_error"] < 1e-7  # the mean over both ranks' data, not one's
        assert mesh["converged"] and np.allclose(mesh["eigenvalues"], truth[:3], rtol=0, atol=1e-5)
        estimate, stderr = mesh["trace"]
        assert abs(estimate - trace) < 3 * stderr
    # (2, 1): each rank holds every row, split over its shard group of one rank; (1, 2): each rank its own rows
    assert [(m["rows"], m["split_ranks"], m["index"]) for m in replicated] == [(n, 1, list(range(n)))] * 2
    assert [(m["rows"], m["split_ranks"]) for m in sharded] == [(66, 2), (47, 2)]
    assert sorted(sharded[0]["index"] + sharded[1]["index"]) == list(range(n))
    for rec in ranks:  # replicas built from different weights: refused on every rank, no hang
        assert rec["hsdp_replicas"].startswith("RankDisagreementError: the 2 replicas of the 2-D device mesh")
    for mesh in (replicated, sharded):  # every rank the same numbers, bit for bit
        assert mesh[0]["eigenvalues"] == mesh[1]["eigenvalues"] and mesh[0]["trace"] == mesh[1]["trace"]
    # vectors drawn by parameter: the same seeds give the same numbers on both meshes, to rounding
    assert np.allclose(replicated[0]["eigenvalues"], sharded[0]["eigenvalues"], rtol=1e-9, atol=0)
    assert np.isclose(replicated[0]["trace"][0], sharded[0]["trace"][0], rtol=1e-9, atol=0)


def _check_the_fsdp2_report(out, rec):
    """``hessop analyze`` of the FSDP2 model (tests/mpi/fsdp_factories.py) against the dense Hessian."""
    n, truth = rec["n"], rec["truth"]
    first = json.loads((out / "first.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    assert first["status"] == report["status"] == "complete" and report["info"]["processes"] == 2
    assert report["info"]["parameters"] == n and report["config"]["sharded"] == "fully_shard"
    steps = report["steps"]
    assert rec["cli_numbers"] == [steps["eigenvalues"]["eigenvalues"], steps["trace"]["trace"]]  # rank 0 wrote them
    eig = steps["eigenvalues"]
    assert all(eig["converged"]) and np.allclose(eig["eigenvalues"], truth[:5], rtol=0, atol=1e-5)
    assert 0 < eig["product_error"] < 1e-6 and min(eig["residual_norms"]) >= eig["product_error"]
    assert rec["cli_vectors"]["rows"] == [66, 47]  # each rank kept its own rows of the eigenvectors, no more
    assert rec["cli_vectors"]["residual"] < 1e-5  # and together they are the dense Hessian's eigenvectors
    tr = steps["trace"]
    assert abs(tr["trace"] - rec["trace"]) < 3 * tr["stderr"]
    rho = steps["density"]
    assert rho["num_probes"] == 2 and np.allclose(np.sum(rho["weights"], axis=1), 1.0)
    assert np.min(rho["nodes"]) > truth[-1] - 1e-6 and np.max(rho["nodes"]) < truth[0] + 1e-6  # Ritz values
    center, loss = rec["cli_landscapes"]["center"]
    assert abs(center - loss) < 1e-12 and steps["landscape_2d"]["center_loss"] == center
    # every point of both landscapes is the dense model's loss along the kept eigenvectors
    assert rec["cli_landscapes"]["line_error"] < 1e-12 and rec["cli_landscapes"]["plane_error"] < 1e-12
    slopes, want = rec["cli_landscapes"]["slopes"]  # gradient . eigenvector over the whole vectors, not one rank's
    assert np.allclose(slopes, want, rtol=0, atol=1e-12)
    layers = steps["layerwise"]
    assert [(r["block"], r["num_params"]) for r in layers["rows"]] == [("0", 77), ("2", 36)]
    for row, top in zip(layers["rows"], rec["block_tops"]):
        assert row["converged"] and abs(row["top_eigenvalue"] - top) < 1e-5  # each block's dense top eigenvalue
        assert abs(row["trace"] - rec["block_traces"][row["block"]]) < 3 * row["trace_stderr"]
        assert 0 <= row["jensen_shannon_to_full"] <= 1 and row["wasserstein_to_full"] >= 0
    assert abs(layers["full"]["top_eigenvalue"] - truth[0]) < 1e-5
    # the resume (landscapes dropped from the state, the factory's weights perturbed) redid them from the
    # weights and eigenvector rows each rank kept: the first run's numbers exactly
    assert set(first["seconds"]) == set(report["seconds"])
    for name in ("landscape_1d", "landscape_2d"):
        assert report["steps"][name] == first["steps"][name]
    # the same model sharded over one rank, the command line's seeds: the same numbers, the same products
    one = rec["one_rank"]
    assert one["rows"] == n and one["num_matvecs"] == eig["num_matvecs"]
    assert np.allclose(one["eigenvalues"], eig["eigenvalues"], rtol=1e-9, atol=0)
    assert abs(one["trace"] - tr["trace"]) < 1e-9 * abs(tr["trace"])


def test_the_replicas_check_of_a_two_by_two_mesh_compares_only_ranks_of_one_shard_coordinate():
    """Four ranks of a (2, 2) HSDP mesh: ranks 0 and 2 hold shard 0, ranks 1 and 3 shard 1 (what a
    2-rank launch cannot build; tried by hand on 4 ranks, docs/distributed.md)."""
    pytest.importorskip("torch")
    from hessop.backends.torch.meshes import replica_table, replicas_differ

    def differ(fingerprints):  # the entry-wise maximum over the ranks: what allreduce_max gives each
        return replicas_differ(np.maximum.reduce([replica_table(np.asarray(f, dtype=float), r % 2, 2)
                                                  for r, f in enumerate(fingerprints)]))

    same = [[3.0, 1.0], [5.0, -2.0], [3.0, 1.0], [5.0, -2.0]]
    assert not differ(same)  # another shard's rows are not a replica's
    assert differ([[3.0, 1.0], [5.0, -2.0], [3.0, 1.5], [5.0, -2.0]])  # rank 2 is not rank 0's replica
    assert differ([[3.0, 1.0], [5.0, -2.0], [3.0, 1.0], [5.0, 2.0]])


def test_the_old_fsdp_wrapper_is_refused_with_a_sentence_naming_fully_shard():
    torch = pytest.importorskip("torch")
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapped)
    with pytest.raises(TypeError, match="fully_shard"):
        hessop.hessian(wrapped, torch.nn.MSELoss(), (torch.zeros(2, 1), torch.zeros(2, 1)))
