"""``hessop analyze`` on a model sharded with FSDP2, in this process: one rank, a world of one gloo process.

What needs two ranks (the report against the dense Hessian, the resume, the eigenvector rows of
each rank) runs in the torchrun launch of tests/mpi/fsdp.py (tests/test_split.py). Here: the
per-rank files of a one-rank run and its resume, the refusals (what would move, cast or load a
sharded model; processes that are not the model's; a resume on other ranks; damaged or missing
per-rank files), and how ``--comm`` finds a torchrun job.
"""

import json
from argparse import Namespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from hessop.cli import session as session_module  # noqa: E402
from hessop.cli.errors import UsageError  # noqa: E402
from hessop.cli.main import main  # noqa: E402
from hessop.cli.run import RunState, part_name  # noqa: E402
from hessop.cli.sharded import check_sharded, is_sharded  # noqa: E402
from hessop.comm.serial import SerialComm  # noqa: E402

FACTORIES = '''
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

CALLS = 0


def plain():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()


def sharded():
    global CALLS
    CALLS += 1
    model = plain()
    if CALLS > 1:  # as a factory without a seed: a resume must load the shards the first run saved
        with torch.no_grad():
            model[0].weight.add_(0.5)
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    return model, torch.nn.CrossEntropyLoss()


def data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(20, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen))]
'''


@pytest.fixture(scope="module")
def world_of_one(tmp_path_factory):
    """A gloo process group of this process alone (torchrun's environment is not set: ``--comm auto`` is serial)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    store = tmp_path_factory.mktemp("store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def factories(tmp_path, world_of_one):
    path = tmp_path / "fsdp_factories.py"
    path.write_text(FACTORIES)
    return path


def _argv(factories, out, *more):
    return ["analyze", "--model", f"{factories}:sharded", "--data", f"{factories}:data", "--out", str(out),
            "--budget", "small", "--eig", "2", "--landscape", "--quiet", *more]


def _dense_top(factories):
    namespace: dict = {}
    exec(compile(FACTORIES, str(factories), "exec"), namespace)
    model = namespace["plain"]()
    (x, y), = namespace["data"]()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def loss(*ps):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y)

    blocks = torch.autograd.functional.hessian(loss, params)
    dense = torch.cat([torch.cat([b.reshape(p.numel(), q.numel()) for b, q in zip(row, params)], 1)
                       for row, p in zip(blocks, params)]).numpy()
    return np.sort(np.linalg.eigvalsh(dense))[::-1], float(loss(*params))


def test_a_factory_that_shards_outside_torchrun_is_told_to_launch_it_with_torchrun(tmp_path, capsys):
    path = tmp_path / "outside.py"
    path.write_text("from torch.distributed.device_mesh import init_device_mesh\n\n"
                    "def model():\n    init_device_mesh('cpu', (2,))\n\n"
                    "def data():\n    return []\n")
    if dist.is_initialized():  # first in the file: before the other tests start their one-rank group
        pytest.skip("a process group is already initialised in this process")
    assert main(["analyze", "--model", f"{path}:model", "--data", f"{path}:data", "--out", str(tmp_path / "r")]) == 2
    assert "launch it with torchrun --nproc-per-node N -m hessop analyze" in capsys.readouterr().err


def test_a_sharded_run_keeps_each_ranks_own_files_and_resumes_to_the_same_numbers(factories, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(_argv(factories, out, "--device", "cpu", "--dtype", "float64")) == 0  # options that match: kept
    arrays = sorted(p.name for p in (out / "arrays").iterdir())
    assert arrays == ["eigenvectors.rank0of1.npy", "model.rank0of1.pt"]  # no whole-model model.pt
    first = json.loads((out / "report.json").read_text())
    top, loss = _dense_top(factories)
    assert np.allclose(first["steps"]["eigenvalues"]["eigenvalues"], top[:2], atol=1e-6)
    assert abs(first["steps"]["landscape_1d"]["center_loss"] - loss) < 1e-12
    assert first["config"]["sharded"] == "fully_shard" and first["config"]["device"] == "cpu"
    # drop the landscapes, as a run that did not finish them; the factory now perturbs its weights
    state = json.loads((out / "state.json").read_text())
    for name in ("landscape_1d", "landscape_2d"):
        del state["steps"][name]
    (out / "state.json").write_text(json.dumps(state))
    resumed = _argv(factories, out, "--device", "cpu", "--dtype", "float64")
    assert main([*resumed, "--resume"]) == 0
    again = json.loads((out / "report.json").read_text())
    for name in ("landscape_1d", "landscape_2d"):
        assert again["steps"][name] == first["steps"][name]
    # what a resume refuses: this rank's files damaged or missing, a run started on other ranks
    state = json.loads((out / "state.json").read_text())
    del state["steps"]["landscape_2d"]
    (out / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    shards = out / "arrays" / "model.rank0of1.pt"
    kept = shards.read_bytes()
    torch.save({"0.weight": torch.zeros(2)}, shards)  # not this rank's shards
    assert main([*resumed, "--resume"]) == 2
    assert f"{shards} is damaged (not this rank's shards of the model" in capsys.readouterr().err
    shards.write_bytes(kept)
    vectors = out / "arrays" / "eigenvectors.rank0of1.npy"
    vectors.unlink()
    assert main([*resumed, "--resume"]) == 2
    assert f"{vectors} is missing" in capsys.readouterr().err
    state["config"]["ranks"] = 2  # started on two ranks, resumed on one: its parts were cut for two
    (out / "state.json").write_text(json.dumps(state))
    assert main([*resumed, "--resume"]) == 2
    assert "ranks: 2 then, 1 now" in capsys.readouterr().err


def test_what_would_cast_move_or_load_a_sharded_model_is_refused_with_what_to_do(factories, tmp_path, capsys):
    assert main([*_argv(factories, tmp_path / "a"), "--dtype", "float32"]) == 2
    assert "cast the model in the factory before fully_shard" in capsys.readouterr().err
    checkpoint = tmp_path / "weights.pt"
    torch.save({}, checkpoint)
    assert main([*_argv(factories, tmp_path / "b"), "--checkpoint", str(checkpoint)]) == 2
    assert "load it in the --model factory before calling fully_shard" in capsys.readouterr().err
    namespace: dict = {}
    exec(compile(FACTORIES, str(factories), "exec"), namespace)
    model, _ = namespace["sharded"]()
    assert is_sharded(model) and not is_sharded(namespace["plain"]())
    args = Namespace(checkpoint=None, dtype=None, device="cuda")
    with pytest.raises(UsageError, match="move the model in the factory before fully_shard"):
        check_sharded(model, args, SerialComm())

    class TwoMPIRanks(SerialComm):
        size = 2

    with pytest.raises(UsageError, match="launch it with torchrun --nproc-per-node 1"):
        check_sharded(model, Namespace(checkpoint=None, dtype=None, device=None), TwoMPIRanks())
    assert check_sharded(model, Namespace(checkpoint=None, dtype="float64", device="cpu"), SerialComm()) == (
        "cpu", "float64")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    part = namespace["plain"]()
    fully_shard(part[0], mesh=init_device_mesh("cpu", (1,)))  # the first layer only, not the root
    with pytest.raises(UsageError, match=r"only part of the model .*2.weight is not sharded.*root module too"):
        check_sharded(part, Namespace(checkpoint=None, dtype=None, device=None), SerialComm())


def test_an_hsdp_model_gives_the_dense_numbers_and_other_placements_are_refused(factories):
    """A 2-D (replicate, shard) mesh of one rank: the command line's checks accept it and the operator gives
    the dense top eigenvalues, split over the shard dimension; a placement hessop cannot split by is refused.
    (Two ranks, on meshes (2, 1) and (1, 2), in tests/mpi/fsdp.py.)"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    import hessop

    namespace: dict = {}
    exec(compile(FACTORIES, str(factories), "exec"), namespace)
    hybrid = fully_shard(namespace["plain"](), mesh=init_device_mesh("cpu", (1, 1), mesh_dim_names=("r", "s")))
    assert tuple(map(str, next(iter(hybrid.parameters())).placements)) == ("R", "S(0)")
    assert check_sharded(hybrid, Namespace(checkpoint=None, dtype=None, device=None), SerialComm()) == (
        "cpu", "float64")
    H = hessop.hessian(hybrid, torch.nn.CrossEntropyLoss(), namespace["data"]())
    assert H.split is not None and H.split.rows == H.shape[0] == 31 and H.comm.size == 1
    top, _ = _dense_top(factories)
    assert np.allclose(hessop.eigsh(H, k=2, seed=0).eigenvalues, top[:2], rtol=0, atol=1e-6)
    columns = fully_shard(namespace["plain"](), mesh=init_device_mesh("cpu", (1,)),  # weights split by column
                          shard_placement_fn=lambda p: Shard(1) if p.ndim == 2 else None)
    with pytest.raises(ValueError, match=r"0.weight is placed .*sharded on dimension 0 over one mesh dimension"):
        hessop.hessian(columns, torch.nn.CrossEntropyLoss(), namespace["data"]())


def test_comm_auto_finds_torchrun_and_torch_joins_the_group(monkeypatch, world_of_one):
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    assert session_module.communicator("auto").size == 1 and not session_module._under_torchrun()
    comm = session_module.communicator("torch")  # the group this process started: used as it is
    assert type(comm).__name__ == "TorchDistComm" and comm.size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert session_module._under_torchrun()
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UsageError, match="no torchrun job to join .*MASTER_ADDR.*launch with torchrun"):
        session_module.torch_world("torch")


def test_a_rank_writes_its_own_part_and_reads_back_only_its_own(tmp_path):
    state = RunState(tmp_path, {}, writer=False)  # a rank other than 0 writes its own part
    rows = np.arange(6.0).reshape(3, 2)
    state.save_array("eigenvectors", rows, part=(1, 2))
    state.save_array("eigenvectors", rows)  # a whole array: rank 0's to write, not this rank's
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == ["eigenvectors.rank1of2.npy"]
    assert part_name("eigenvectors", (1, 2)) == "eigenvectors.rank1of2" and part_name("x", None) == "x"
    assert np.array_equal(state.load_array("eigenvectors", rows=3, part=(1, 2)), rows)
    with pytest.raises(UsageError, match="rank1of3.npy is missing"):
        state.load_array("eigenvectors", rows=3, part=(1, 3))  # cut for another number of ranks
    with pytest.raises(UsageError, match="is damaged"):
        state.load_array("eigenvectors", rows=4, part=(1, 2))  # another layout's rows


def test_a_sharded_models_step_is_measured_again_after_the_weights_changed(factories, monkeypatch):
    """FSDP2's finite differences kept the step (and the error estimate, the solvers' residual floor) measured
    at the first product for good; the shifts hessop itself makes and undoes (``loss_at``) do not count."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import hessop
    from hessop.backends.torch import sharded

    ladders = []
    measure = sharded.ladder
    monkeypatch.setattr(sharded, "ladder", lambda *args: ladders.append(1) or measure(*args))
    namespace: dict = {}
    exec(compile(FACTORIES, str(factories), "exec"), namespace)
    model = fully_shard(namespace["plain"](), mesh=init_device_mesh("cpu", (1,)))
    H = hessop.hessian(model, torch.nn.CrossEntropyLoss(), namespace["data"]())
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H.apply(v)
    H.loss_at(H.parameters() + 0.1 * v)
    H.apply(v)
    assert len(ladders) == 1  # the same weights: the same step
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # as an optimizer's step would change them in place
    H.apply(v)
    assert len(ladders) == 2 and H.product_error is not None  # measured again, at the new weights
