"""Curvature tracking: valid JSONL records, correct numbers, nothing lost when training is interrupted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import hessop
from hessop.analysis.tracking import CurvatureTracker, plot_track, read_track


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()  # 67 parameters
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return model, (x, y), loss_fn, step


def test_records_every_n_steps_with_correct_numbers(tmp_path):
    model, data, loss_fn, step = setup()
    path = tmp_path / "track.jsonl"
    tracker = CurvatureTracker(lambda: hessop.hessian(model, loss_fn, data), path, every=2, k=2,
                               trace_max_matvecs=24, seed=1)
    expected = []
    for i in range(5):
        loss = step()
        rec = tracker(i, loss=loss)
        assert (rec is None) == (i % 2 == 1)
        if rec is not None:
            dense = hessop.hessian(model, loss_fn, data).to_dense()
            expected.append((np.linalg.eigvalsh(dense)[::-1][:2], np.trace(dense)))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 == tracker.records_written
    records = [json.loads(line) for line in lines]
    assert records == [r.to_dict() for r in read_track(path)]
    assert [r["step"] for r in records] == [0, 2, 4]
    for rec, (top, tr) in zip(records, expected):
        np.testing.assert_allclose(rec["top_eigenvalues"], top, rtol=1e-6)
        assert rec["converged"] and rec["num_matvecs"] > 0 and rec["loss"] > 0
        assert abs(rec["trace"] - tr) < 4 * rec["trace_stderr"]


def test_an_interrupted_run_keeps_every_record_written_before(tmp_path):
    model, data, loss_fn, step = setup()
    path = tmp_path / "track.jsonl"
    tracker = CurvatureTracker(lambda: hessop.hessian(model, loss_fn, data), path, every=1, unit="epoch",
                               trace=False, k=1)
    with pytest.raises(KeyboardInterrupt):
        for epoch in range(10):
            step()
            if epoch == 3:
                raise KeyboardInterrupt  # Ctrl-C in the middle of training
            tracker(epoch)
    before = read_track(path)
    assert [r.step for r in before] == [0, 1, 2]
    # a resumed run appends; a line cut short by a killed process is skipped, not fatal
    tracker(3)
    with open(path, "a") as f:
        f.write('{"epoch": 4, "top_eig')
    after = read_track(path)
    assert after[:3] == before and [r.step for r in after] == [0, 1, 2, 3]


def test_a_malformed_middle_line_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_track(path)
    with pytest.raises(FileNotFoundError):
        read_track(tmp_path / "missing.jsonl")


def test_density_records_and_plots(tmp_path):
    from hessop.analysis.plots import savefig

    model, data, loss_fn, step = setup()
    path = tmp_path / "track.jsonl"
    tracker = CurvatureTracker(lambda: hessop.hessian(model, loss_fn, data), path, every=1, k=1, density=True,
                               trace_max_matvecs=12, density_steps=12, num_probes=1)
    for i in range(2):
        step()
        tracker(i)
    rec = read_track(path)[-1]
    grid, values = np.array(rec.density["grid"]), np.array(rec.density["values"])
    assert grid.shape == values.shape and np.all(values >= 0)
    assert 0.0 <= rec.density["negative_mass"] <= 1.0
    savefig(plot_track(path), tmp_path / "track.png")
    assert (tmp_path / "track.png").stat().st_size > 1000


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"unit": "batch"}, {"k": 0, "trace": False}])
def test_bad_arguments_raise_value_errors(tmp_path, kwargs):
    with pytest.raises(ValueError):
        CurvatureTracker(lambda: None, tmp_path / "t.jsonl", **kwargs)


def test_records_are_dataclasses_whose_dicts_are_the_file_lines(tmp_path):
    from hessop.analysis.results import TrackRecord

    model, data, loss_fn, step = setup()
    path = tmp_path / "track.jsonl"
    tracker = CurvatureTracker(lambda: hessop.hessian(model, loss_fn, data), path, every=1, k=1, density=True,
                               trace_max_matvecs=12, density_steps=12, num_probes=1)
    rec = tracker(0, loss=step(), note="warm-up")
    assert isinstance(rec, TrackRecord) and rec.step == 0 and rec.extra["note"] == "warm-up"
    line = json.loads(path.read_text())
    assert line == rec.to_dict() and line["step"] == 0 and line["loss"] == rec.extra["loss"]
    assert read_track(path) == [rec] and TrackRecord.from_dict(line) == rec
    assert line["density"]["negative_mass_below"] < 0  # minus the density's resolution: the one threshold
