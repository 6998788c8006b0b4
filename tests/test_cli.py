"""The ``hessop`` command line end to end: demo, analyze, the report, bad input, interrupt and resume.

The numbers in the reports are checked against dense float64 Hessians. The
factories ``hessop analyze`` loads are defined in this module and named by
file path (``tests/test_cli.py:tiny_model``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

from hessop.cli import steps as cli_steps
from hessop.cli.main import main
from hessop.factory import hessian
from hessop.models.small import MLP, random_batches

HERE = Path(__file__).resolve()

# -- factories named on the command line --------------------------------------------------------


def tiny_model():
    torch.manual_seed(3)
    return MLP(4, 3, hidden=(6,)), torch.nn.CrossEntropyLoss()


def tiny_data():
    return random_batches((4,), (20, 20, 13), num_classes=3, seed=1)


def wrong_model():
    return "not a model"


def wrong_data():
    return 42


def generator_data():
    return (batch for batch in tiny_data())


def broken_model():
    raise ValueError("weights file not found")


def interrupting_model():
    raise KeyboardInterrupt


def mismatched_data():
    return random_batches((7,), (10,), num_classes=3, seed=1)


NOT_CALLABLE = 3


def _spec(name: str) -> str:
    return f"{HERE}:{name}"


def _analyze(out: Path, *extra: str) -> list[str]:
    return ["analyze", "--model", _spec("tiny_model"), "--data", _spec("tiny_data"), "--dtype", "float64",
            "--budget", "small", "--threads", "1", "--out", str(out), "--quiet", *extra]


def _dense_eigenvalues(model, loss_fn, data) -> np.ndarray:
    H = hessian(model.double().eval(), loss_fn, data)
    return np.linalg.eigvalsh(H.to_dense())[::-1]


# -- demo ------------------------------------------------------------------------------------


def test_demo_writes_a_complete_report_with_true_numbers(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--budget", "small", "--out", str(out), "--quiet", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "complete" and doc["missing"] == []
    for name in ("report.json", "report.md", "report.html", *doc["figures"].values()):
        assert (out / name).is_file(), name
    assert set(doc["figures"]) == {"eigenvalues", "density", "landscape_1d", "landscape_2d", "layerwise"}

    # the trained weights the report analysed, and the dense Hessian of their loss
    from hessop.cli.digits import digits_model, load_digits_data

    cfg = doc["config"]
    model = digits_model(tuple(cfg["hidden"]), seed=0)
    model.load_state_dict(torch.load(out / "arrays" / "model.pt", weights_only=True))
    data = load_digits_data(cfg["num_train"], seed=0)
    exact = _dense_eigenvalues(model, torch.nn.CrossEntropyLoss(), data.batches(512))
    steps = doc["steps"]
    top = np.array(steps["eigenvalues"]["eigenvalues"])
    np.testing.assert_allclose(top, exact[: top.size], rtol=1e-6, atol=1e-9 * exact[0])
    tr = steps["trace"]
    assert abs(tr["trace"] - exact.sum()) <= 4 * tr["stderr"] + 1e-9 * abs(exact).sum()
    assert steps["landscape_1d"]["center_loss"] == pytest.approx(steps["train"]["train_loss"], rel=1e-5)
    # the report shows its tables and embeds every figure
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(doc["figures"])
    assert "<table>" in html and "src='eigenvalues.png'" not in html
    md = (out / "report.md").read_text()
    assert f"| 1 | {top[0]:.6g} |" in md and "![Spectral density](density.png)" in md


def test_lm_demo_reports_the_transformer_blocks_with_true_numbers(tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["demo", "--task", "lm", "--budget", "small", "--dtype", "float64", "--out", str(out), "--quiet",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "complete" and doc["config"]["task"] == "lm"
    rows = doc["steps"]["layerwise"]["rows"]
    assert [r["block"] for r in rows] == ["embeddings", "attention 0", "mlp 0", "norms", "head"]
    assert sum(r["num_params"] for r in rows) == doc["info"]["parameters"]

    # the weights the report analysed, and the dense Hessian of the token-mean loss on its data
    from hessop.cli.demo import LM_DEMO
    from hessop.cli.lm import CharData, lm_model, stdlib_text

    cfg = LM_DEMO["small"]
    data = CharData.from_text(stdlib_text(cfg["text_chars"]))
    model = lm_model(data, cfg["block_size"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"])
    model.load_state_dict(torch.load(out / "arrays" / "model.pt", weights_only=True))
    batches = data.batches(cfg["hessian_batches"], cfg["hessian_batch_size"], cfg["block_size"], seed=1)
    H = hessian(model.double().eval(), torch.nn.CrossEntropyLoss(), batches)

    def arpack_top(A, k):  # an independent solver: n = 6384 makes a dense Hessian cost minutes
        return np.sort(scipy.sparse.linalg.eigsh(A, k=k, which="LA", tol=1e-12)[0])[::-1]

    top = np.array(doc["steps"]["eigenvalues"]["eigenvalues"])
    np.testing.assert_allclose(top, arpack_top(H, top.size), rtol=1e-6)
    for row in rows:  # each block's top eigenvalue is its diagonal block's
        block = H.restrict(*model.parameter_blocks()[row["block"]])
        assert row["top_eigenvalue"] == pytest.approx(arpack_top(block, 1)[0], rel=1e-6)
    assert "| attention 0 |" in (out / "report.md").read_text()


def test_demo_resumed_after_training_analyses_the_trained_weights(tmp_path, monkeypatch, capsys):
    args = ["demo", "--budget", "small", "--eig", "2", "--trace", "--quiet", "--json"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("HESSOP_INTERRUPT_AFTER", "1")  # stop right after training
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert list(json.loads(capsys.readouterr().out)["steps"]) == ["train"]
    monkeypatch.delenv("HESSOP_INTERRUPT_AFTER")
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    _assert_same_numbers(json.loads(capsys.readouterr().out)["steps"], whole["steps"])


# -- analyze ---------------------------------------------------------------------------------


def test_analyze_matches_the_dense_hessian_of_a_user_factory(tmp_path, capsys):
    assert main(_analyze(tmp_path, "--eig", "3", "--trace", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["steps"] == ["eigenvalues", "trace"]
    exact = _dense_eigenvalues(*tiny_model(), tiny_data())
    np.testing.assert_allclose(doc["steps"]["eigenvalues"]["eigenvalues"], exact[:3], rtol=1e-6)
    tr = doc["steps"]["trace"]
    assert abs(tr["trace"] - exact.sum()) <= 4 * tr["stderr"] + 1e-8 * abs(exact).sum()
    assert doc["info"]["parameters"] == exact.size


def test_analyze_imports_factories_beside_the_user_and_takes_a_dataloader(tmp_path, monkeypatch, capsys):
    (tmp_path / "hessop_cli_user_factories.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))\n"
        "    return model, torch.nn.MSELoss()\n"
        "def loader(rank, size):\n"
        "    g = torch.Generator().manual_seed(rank)\n"
        "    x, y = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)\n"
        "    return DataLoader(TensorDataset(x, y), batch_size=8)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ["analyze", "--model", "hessop_cli_user_factories:build", "--data", "hessop_cli_user_factories:loader",
            "--eig", "2", "--dtype", "float64", "--threads", "1", "--out", "r", "--quiet", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    import hessop_cli_user_factories as user

    model, loss_fn = user.build()
    x, y = user.loader(0, 1).dataset.tensors
    exact = _dense_eigenvalues(model, loss_fn, (x, y))
    np.testing.assert_allclose(doc["steps"]["eigenvalues"]["eigenvalues"], exact[:2], rtol=1e-6)


def test_analyze_loads_a_checkpoint(tmp_path, capsys):
    other = MLP(4, 3, hidden=(6,))
    torch.nn.init.normal_(other.fc1.weight, std=2.0)
    torch.save({"model_state_dict": other.state_dict()}, tmp_path / "ckpt.pt")
    assert main(_analyze(tmp_path / "out", "--eig", "2", "--checkpoint", str(tmp_path / "ckpt.pt"), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    exact = _dense_eigenvalues(other, torch.nn.CrossEntropyLoss(), tiny_data())
    np.testing.assert_allclose(doc["steps"]["eigenvalues"]["eigenvalues"], exact[:2], rtol=1e-6)


def test_the_report_serialises_library_results_with_one_negative_mass_and_blocks_by_either_name(tmp_path, capsys):
    from hessop.analysis.layerwise import LayerwiseResult
    from hessop.analysis.spectrum import density_from_dict

    assert main(_analyze(tmp_path / "a", "--density", "--layerwise", "--blocks", "modules", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    rho = doc["steps"]["density"]
    assert rho["negative_mass_below"] == -rho["sigma"]  # the report's number is SpectralDensity.negative_mass()
    assert rho["negative_mass"] == density_from_dict(rho).negative_mass()
    layers = LayerwiseResult.from_dict(doc["steps"]["layerwise"])  # the step is the result's own to_dict()
    assert [r.block for r in layers.rows] == ["fc1", "fc2"]
    assert main(_analyze(tmp_path / "b", "--layerwise", "--groups", "modules", "--json")) == 0
    out = capsys.readouterr()
    assert "--groups is deprecated, use --blocks" in out.err
    again = LayerwiseResult.from_dict(json.loads(out.out)["steps"]["layerwise"])
    assert [r.block for r in again.rows] == [r.block for r in layers.rows]
    # the same numbers up to rounding (hvp="auto" may time a different but exact product strategy)
    np.testing.assert_allclose([r.trace for r in again.rows], [r.trace for r in layers.rows], rtol=1e-12)


# -- bad input: exit code 2 and one actionable sentence, no traceback ---------------------------


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    ok_model, ok_data = _spec("tiny_model"), _spec("tiny_data")
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    wrong_shape = tmp / "wrong.pt"
    torch.save(MLP(4, 3, hidden=(9,)).state_dict(), wrong_shape)
    bad_file = tmp / "bad_factories.py"
    bad_file.write_text("def build(:\n    return 1\n")
    base = ["analyze", "--quiet", "--out", str(tmp / "o")]
    return [
        (base + ["--model", "no_colon", "--data", ok_data], "is not of the form"),
        (base + ["--model", "no_such_module_hessop:f", "--data", ok_data], "cannot import module"),
        (base + ["--model", str(tmp / "missing.py") + ":f", "--data", ok_data], "no such file"),
        (base + ["--model", _spec("no_such_factory"), "--data", ok_data], "has no attribute"),
        (base + ["--model", _spec("NOT_CALLABLE"), "--data", ok_data], "not a callable factory"),
        (base + ["--model", _spec("wrong_model"), "--data", ok_data], "return a torch.nn.Module"),
        (base + ["--model", _spec("broken_model"), "--data", ok_data], "the factory raised ValueError"),
        (base + ["--model", ok_model, "--data", _spec("wrong_data")], "return a DataLoader"),
        (base + ["--model", ok_model, "--data", _spec("generator_data")], "can be read only once"),
        (base + ["--model", ok_model, "--data", _spec("mismatched_data")], "cannot be evaluated on the data"),
        (base + ["--model", ok_model, "--data", ok_data, "--checkpoint", str(tmp / "none.pt")], "no such file"),
        (base + ["--model", ok_model, "--data", ok_data, "--checkpoint", str(garbage)], "cannot read"),
        (base + ["--model", ok_model, "--data", ok_data, "--checkpoint", str(wrong_shape)], "does not fit the model"),
        (base + ["--model", ok_model, "--data", ok_data, "--eig", "0"], "at least one eigenvalue"),
        (["analyze", "--quiet", "--out", str(tmp / "never"), "--model", ok_model, "--data", ok_data, "--resume"],
         "no saved run"),
        (base + ["--model", ok_model, "--data", ok_data, "--threads", "0"], "positive number of threads"),
        (["analyze", "--model", ok_model, "--data", ok_data, "--out", str(garbage / "sub")],
         "cannot create the report folder"),
        # issue 12, item 10: checked before any work, with exit 2
        (base + ["--model", f"{bad_file}:build", "--data", ok_data], "cannot load"),
        (base + ["--model", ok_model, "--data", ok_data, "--seed", "-1"], "--seed -1: give a non-negative integer"),
        (base + ["--model", ok_model, "--data", ok_data, "--seed", str(2**64)], "--seed 18446744073709551616"),
    ]


def test_bad_input_exits_2_with_one_sentence(tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA device")
def test_missing_cuda_is_a_usage_error(tmp_path, capsys):
    assert main(_analyze(tmp_path, "--device", "cuda")) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_options_exit_2_from_argparse(capsys):
    for argv in (["analyze", "--data", "m:f"], ["demo", "--budget", "huge"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_resume_refuses_other_options(tmp_path, capsys):
    assert main(_analyze(tmp_path, "--eig", "2")) == 0
    assert main(_analyze(tmp_path, "--eig", "2", "--seed", "5", "--resume")) == 2
    assert "started with other options" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="cannot import module"):
        main(["analyze", "--debug", "--model", "no_such_module_hessop:f", "--data", "x:y", "--out", str(tmp_path)])


def test_a_failing_analysis_exits_1_and_keeps_the_finished_steps(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise FloatingPointError("the operator returned NaN")

    monkeypatch.setitem(cli_steps.STEPS, "density", broken)
    assert main(_analyze(tmp_path, "--eig", "2", "--density", "--trace", "--json")) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failed" and "FloatingPointError: the operator returned NaN" in doc["error"]
    assert list(doc["steps"]) == ["eigenvalues", "trace"] and doc["missing"] == ["density"]
    assert "FAILED report" in (tmp_path / "report.md").read_text()


# -- interrupt and resume --------------------------------------------------------------------


def test_interrupted_run_keeps_its_steps_and_resumes_to_the_same_numbers(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_analyze(full, "--json")) == 0
    reference = json.loads(capsys.readouterr().out)

    monkeypatch.setenv("HESSOP_INTERRUPT_AFTER", "2")
    assert main(_analyze(cut, "--json")) == 130
    partial = json.loads(capsys.readouterr().out)
    assert partial["status"] == "partial"
    assert list(partial["steps"]) == ["eigenvalues", "trace"]
    assert partial["missing"] == ["density", "landscape_1d", "landscape_2d", "layerwise"]
    assert "PARTIAL report" in (cut / "report.md").read_text()
    assert "PARTIAL report" in (cut / "report.html").read_text()

    monkeypatch.setenv("HESSOP_INTERRUPT_AFTER", "1")  # one more step, then interrupted again
    assert main(_analyze(cut, "--resume")) == 130
    monkeypatch.delenv("HESSOP_INTERRUPT_AFTER")
    assert main(_analyze(cut, "--resume", "--json")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "complete"
    _assert_same_numbers(resumed["steps"], reference["steps"])  # same seed, same numbers, whatever the interruptions


def _assert_same_numbers(a, b, path="steps"):
    """Equal structure and numbers equal up to rounding (summation order may differ between processes)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and a and not isinstance(a[0], (int, float)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, (list, float)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14, err_msg=path)
    else:
        assert a == b, path


def test_a_swallowed_ctrl_c_is_not_recorded_as_a_finished_step(tmp_path, monkeypatch, capsys):
    """A solver may catch Ctrl-C and return a partial result; the run must still stop and redo that step."""
    real = cli_steps.STEPS["trace"]

    def interrupted_trace(*args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a solver does: swallow it and return what it has
        return real(*args)

    monkeypatch.setitem(cli_steps.STEPS, "trace", interrupted_trace)
    assert main(_analyze(tmp_path, "--eig", "2", "--trace", "--density", "--json")) == 130
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["steps"]) == ["eigenvalues"] and doc["status"] == "partial"
    monkeypatch.setitem(cli_steps.STEPS, "trace", real)
    assert main(_analyze(tmp_path, "--eig", "2", "--trace", "--density", "--resume")) == 0
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "complete"


def test_sigint_to_a_running_process_exits_130_with_a_partial_report(tmp_path):
    """A real SIGINT: the hook makes the process signal itself after its first finished step."""
    cmd = [sys.executable, "-m", "hessop", *_analyze(tmp_path, "--eig", "2", "--trace")]
    env = {**os.environ, "HESSOP_INTERRUPT_AFTER": "1", "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "--resume" in proc.stderr
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "partial"


# -- a run's folder belongs to one run (issue 12, items 7-10) -----------------------------------


def _lock_of(pid: int, host: str | None = None) -> str:
    import socket

    from hessop.cli.run import _start_time

    return json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": _start_time(pid),
                       "since": "2026-01-01 00:00:00", "command": "hessop demo"})


def test_a_folder_held_by_a_live_run_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    lock = out / ".hessop.lock"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(_lock_of(live.pid))
        assert main(_analyze(out, "--eig", "2")) == 2
        err = capsys.readouterr().err.strip()
        assert f"--out {str(out)!r} is in use by another hessop run (pid {live.pid} on" in err
        assert len(err.splitlines()) == 1 and not (out / "state.json").exists()  # the live run's folder untouched
    finally:
        live.kill()
        live.wait()
    assert main(_analyze(out, "--eig", "2")) == 0  # its holder died: the lock is stale and taken over
    assert not lock.exists()  # released when the run ends
    lock.write_text(_lock_of(os.getpid(), host="another-node"))  # cannot be checked from here: refused
    assert main(_analyze(out, "--eig", "2")) == 2
    assert f"delete {str(lock)!r}" in capsys.readouterr().err


def test_a_run_holds_its_folders_lock_while_it_runs(tmp_path, monkeypatch):
    seen = []
    real = cli_steps.STEPS["trace"]

    def spy(*args):
        seen.append(json.loads((tmp_path / ".hessop.lock").read_text())["pid"])
        return real(*args)

    monkeypatch.setitem(cli_steps.STEPS, "trace", spy)
    assert main(_analyze(tmp_path, "--trace")) == 0
    assert seen == [os.getpid()] and not (tmp_path / ".hessop.lock").exists()


def test_resume_on_damaged_state_exits_2_with_one_sentence_naming_the_file(tmp_path, monkeypatch, capsys):
    base = tmp_path / "base"
    monkeypatch.setenv("HESSOP_INTERRUPT_AFTER", "1")  # the eigenvalues are saved, the landscapes are not
    assert main(_analyze(base, "--landscape")) == 130
    monkeypatch.delenv("HESSOP_INTERRUPT_AFTER")
    capsys.readouterr()

    def no_result(path):
        doc = json.loads(path.read_text())
        del doc["steps"]["eigenvalues"]["result"]
        path.write_text(json.dumps(doc))

    damages = [
        ("state.json", lambda p: p.write_bytes(np.random.default_rng(0).bytes(300))),
        ("state.json", lambda p: p.write_text("[1, 2, 3]")),
        ("state.json", no_result),
        ("arrays/eigenvectors.npy", lambda p: p.write_bytes(p.read_bytes()[:150])),
        ("arrays/eigenvectors.npy", lambda p: np.save(p, np.zeros((5, 2)))),
        ("arrays/model.pt", lambda p: p.write_bytes(b"garbage")),
    ]
    for i, (name, damage) in enumerate(damages):
        out = tmp_path / f"damaged{i}"
        shutil.copytree(base, out)
        damage(out / name)
        assert main(_analyze(out, "--landscape", "--resume")) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{out / name} is damaged" in err and "run again without --resume" in err, err


def test_ctrl_c_during_training_keeps_its_promise_of_resume(tmp_path, monkeypatch, capsys):
    from hessop.cli import digits

    real = digits.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "train", interrupted)
    argv = ["demo", "--budget", "small", "--eig", "2", "--out", str(tmp_path), "--quiet", "--json"]
    assert main(argv) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    monkeypatch.setattr(digits, "train", real)
    assert main([*argv, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"


def test_ctrl_c_before_the_run_starts_does_not_promise_resume(tmp_path, capsys):
    argv = ["analyze", "--model", _spec("interrupting_model"), "--data", _spec("tiny_data"), "--out", str(tmp_path)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "--resume" not in err


def _unwritable_folder(tmp_path: Path) -> Path | None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):  # root writes anywhere but in a read-only file system
        try:
            (candidate / ".probe").touch()
            (candidate / ".probe").unlink()
        except OSError:
            return candidate
    return None


def test_an_unwritable_out_is_refused_before_training(tmp_path, monkeypatch, capsys):
    out = _unwritable_folder(tmp_path)
    if out is None:
        pytest.skip("no unwritable folder here")
    from hessop.cli import digits

    trained = []
    monkeypatch.setattr(digits, "train", lambda *a, **k: trained.append(1))
    assert main(["demo", "--budget", "small", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {str(out)!r}: cannot write in the report folder" in err and len(err.splitlines()) == 1
    assert trained == []


def test_python_dash_m_shows_help():
    proc = subprocess.run([sys.executable, "-m", "hessop", "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    assert proc.returncode == 0 and "demo" in proc.stdout and "130 interrupted" in proc.stdout


# -- several processes: one job, one outcome (issue 12, items 5 and 6) ----------------------------


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec on PATH")
def test_analyze_under_mpiexec_uses_each_factorys_shard_and_fails_on_every_process_together(tmp_path):
    """One job runs ``main`` for every data form, then bad data on rank 1, then a failure of rank 1 alone."""
    pytest.importorskip("mpi4py")
    import importlib.util
    import time

    script = HERE.parent / "mpi" / "cli.py"
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, str(script), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)  # a hang: TimeoutExpired
    seconds = time.perf_counter() - start
    # the last case failed on rank 1 alone: it said so and ended the job with its exit code
    assert proc.returncode == 1, (seconds, proc.stdout, proc.stderr)
    assert "hessop: rank 1: RuntimeError: rank 1's eigenvalue step broke" in proc.stderr

    def record(case, rank):
        return json.loads((tmp_path / f"{case}.rank{rank}.json").read_text())

    spec = importlib.util.spec_from_file_location("cli_factories", HERE.parent / "mpi" / "cli_factories.py")
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    exact = _dense_eigenvalues(*factories.model(), factories.list_whole())[:3]
    for form in ("list_whole", "list_own", "loader_whole", "loader_own", "batch_whole", "batch_own"):
        rank0, rank1 = record(form, 0), record(form, 1)
        assert rank0["code"] == rank1["code"] == 0, (form, rank0["stderr"], rank1["stderr"])
        assert rank0["report"]["info"]["processes"] == 2 and rank1["report"] is None  # rank 0 alone reports
        np.testing.assert_allclose(rank0["report"]["steps"]["eigenvalues"]["eigenvalues"], exact, rtol=1e-10,
                                   err_msg=form)
    empty0, empty1 = record("empty", 0), record("empty", 1)  # the data factory returned [] on rank 1
    assert empty0["code"] == empty1["code"] == 2 and empty1["stderr"] == ""
    assert empty0["stderr"].strip() == ("hessop analyze: error: rank 1 failed: --data: the factory returned an "
                                        "empty list; return at least one (inputs, targets) batch")
    nan0, nan1 = record("nan", 0), record("nan", 1)  # NaN in rank 1's shard
    assert nan0["code"] == nan1["code"] == 1 and nan1["stderr"] == ""
    assert "FloatingPointError: rank 1 failed in the loss: the loss of batch 1 is NaN" in nan0["stderr"]
    assert nan0["report"]["status"] == "failed"
