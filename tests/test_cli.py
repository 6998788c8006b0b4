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
        "    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)), torch.nn.MSELoss()\n"
        "def loader(rank, size):\n"
        "    g = torch.Generator().manual_seed(rank)\n"
        "    return DataLoader(TensorDataset(torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)), batch_size=8)\n"
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


# -- bad input: exit code 2 and one actionable sentence, no traceback ---------------------------


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    ok_model, ok_data = _spec("tiny_model"), _spec("tiny_data")
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    wrong_shape = tmp / "wrong.pt"
    torch.save(MLP(4, 3, hidden=(9,)).state_dict(), wrong_shape)
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
        (["analyze", "--model", ok_model, "--data", ok_data, "--out", str(garbage / "sub")], "cannot create the report folder"),
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


def test_python_dash_m_shows_help():
    proc = subprocess.run([sys.executable, "-m", "hessop", "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    assert proc.returncode == 0 and "demo" in proc.stdout and "130 interrupted" in proc.stdout


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec on PATH")
def test_analyze_under_mpiexec_matches_one_process(tmp_path, capsys):
    pytest.importorskip("mpi4py")
    assert main(_analyze(tmp_path / "serial", "--eig", "3", "--trace", "--json")) == 0
    serial = json.loads(capsys.readouterr().out)["steps"]
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "hessop", *_analyze(tmp_path / "mpi", "--eig", "3", "--trace")]
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "mpi" / "report.json").read_text())
    assert doc["info"]["processes"] == 2  # each rank holds a shard of the batches; rank 0 wrote the report
    np.testing.assert_allclose(doc["steps"]["eigenvalues"]["eigenvalues"], serial["eigenvalues"]["eigenvalues"], rtol=1e-10)
    assert doc["steps"]["trace"]["trace"] == pytest.approx(serial["trace"]["trace"], rel=1e-10)
