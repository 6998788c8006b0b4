"""benchmarks/gpu.py's CPU-side logic: a dry run with tiny models writes one JSON and a table, records every
section, and a failing or late section never stops the others."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import gpu


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile as the identity: the compiled path's logic without minutes of compiling on the CPU."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


@pytest.mark.slow
def test_dry_run_writes_json_and_table(tmp_path, no_compiler):
    record = gpu.main(["--dry-run", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["dry_run"] and saved["device"] == "cpu"
    sections = saved["sections"]
    assert list(sections) == ["tests", "cupy", "spectrum", "products"]
    assert "dry run" in sections["tests"]["skipped"] and "skipped" in sections["cupy"]
    assert "error" not in sections["products"] and "error" not in sections["spectrum"], record
    rows = sections["products"]["rows"]
    assert [r["model"] for r in rows] == ["ResNet-18 size (CIFAR ResNet, width 104)", "GPT-2 small"]
    for r in rows:
        assert r["compiled_vs_eager_rel"] < 1e-5 and r["eager_x"] > 0 and r["compiled_x"] > 0 and r["linearized_x"] > 0
    spec = {(r["task"], r["solver"]): r for r in sections["spectrum"]["rows"]}
    top = spec[("top-3", "hessop thick-restart")]
    power = spec[("top-3", "power iteration (PyHessian's algorithm)")]
    assert top["converged"] == 3
    np.testing.assert_allclose(power["eigenvalues"][0], top["eigenvalues"][0], rtol=1e-2)
    xtrace, hutch = spec[("trace", "xtrace")], spec[("trace", "hutchinson")]
    assert abs(xtrace["estimate"] - hutch["estimate"]) < 5 * np.hypot(xtrace["stderr"], hutch["stderr"])
    md = (tmp_path / "gpu.md").read_text()
    assert "| products | done |" in md and "GPT-2 small" in md and "| trace | hutchinson |" in md


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, no_compiler, monkeypatch):
    monkeypatch.setattr(gpu, "products", lambda run: 1 / 0)
    monkeypatch.setattr(gpu, "spectrum", lambda run: {"rows": []})
    saved = gpu.main(["--dry-run", "--out", str(tmp_path)])
    assert saved["sections"]["products"]["error"].startswith("ZeroDivisionError")
    assert "rows" in saved["sections"]["spectrum"] and list(saved["sections"])[-1] == "products"
    assert "ZeroDivisionError" in (tmp_path / "gpu.md").read_text()


def test_sections_past_the_budget_are_skipped():
    run = gpu.Run(budget=10.0, dry=False, device="cpu")
    run.section("spectrum", lambda r: pytest.fail("must not run"))  # 90 s estimated, 10 s left
    assert run.record["sections"]["spectrum"]["skipped"].startswith("out of time")


def test_without_a_gpu_the_real_run_says_what_to_do(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit):
        gpu.main([])
    assert "--dry-run" in capsys.readouterr().err
