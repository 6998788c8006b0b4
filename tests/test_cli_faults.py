"""Faults met by users of the command line (issue 19, item 7): exit status and one sentence, from the real CLI.

Each fault runs ``python -m hessop`` in a subprocess with a timeout, as a user would, and checks the
exit code and the message: a saved step that lost part of its result, a ``state.json`` that is a
directory, a shuffling loader (advice the command line can follow), and ``--eig`` beyond the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hessop.cli.main import main  # noqa: E402

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
FACTORIES = HERE.parent / "test_cli.py"  # tiny_model and tiny_data


def shuffled_data():
    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)


def _analyze(out: Path, *extra: str, data: str = f"{FACTORIES}:tiny_data") -> list[str]:
    return ["analyze", "--model", f"{FACTORIES}:tiny_model", "--data", data, "--dtype", "float64",
            "--budget", "small", "--threads", "1", "--out", str(out), "--quiet", *extra]


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hessop", *argv], capture_output=True, text=True, timeout=120,
                          env=env)


def _one_sentence(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_finished_step_that_lost_part_of_its_result_is_named_as_damaged(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_analyze(out, "--eig", "2")) == 0
    path = out / "state.json"
    doc = json.loads(path.read_text())
    doc["steps"]["eigenvalues"]["result"] = {"stopped": "converged"}  # before: KeyError 'eigenvalues', exit 1
    path.write_text(json.dumps(doc))
    proc = _cli(_analyze(out, "--eig", "2", "--resume"))
    assert proc.returncode == 2, proc.stderr
    err = _one_sentence(proc)
    assert f"{path} is damaged" in err and "'eigenvalues'" in err and "run again without --resume" in err, err


def test_a_state_file_that_is_a_directory_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "state.json").mkdir(parents=True)  # before: "no saved run", then IsADirectoryError, exit 1
    proc = _cli(_analyze(out, "--eig", "2", "--resume"))
    assert proc.returncode == 2, proc.stderr
    err = _one_sentence(proc)
    assert f"{str(out / 'state.json')!r} is a directory" in err and "choose another --out" in err, err
    assert main(_analyze(out, "--eig", "2")) == 2  # and without --resume (in process: the same code path)
    assert f"{str(out / 'state.json')!r} is a directory" in capsys.readouterr().err


def test_a_shuffling_loader_gets_advice_the_command_line_can_follow(tmp_path):
    proc = _cli(_analyze(tmp_path / "run", "--eig", "2", data=f"{HERE}:shuffled_data"))
    assert proc.returncode == 2, proc.stderr
    err = _one_sentence(proc)
    assert "shuffle=False" in err and "check_determinism" not in err and "--data factory" in err, err


def test_eig_beyond_the_model_is_said_in_the_report(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_analyze(out, "--eig", "10000")) == 0
    report = json.loads((out / "report.json").read_text())
    res = report["steps"]["eigenvalues"]
    n = len(res["eigenvalues"]) + 1
    assert res["requested"] == 10000 and n == report["info"]["parameters"]
    text = (out / "report.md").read_text()
    assert f"10000 eigenvalues were asked for (--eig), but the model has only {n} parameters" in text


def test_the_zero_operator_raises_no_overflow_warning():
    import hessop

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("xtrace", "hutch++"):
            r = hessop.trace(np.zeros((30, 30)), method=method)
            assert r.estimate == 0.0 and r.stderr == 0.0
        assert np.all(hessop.diagonal(np.zeros((30, 30))).estimate == 0.0)
