"""Progress bars count the work planned, not the budget: ``72/72 probes``, never ``74/89700``."""

import re

import pytest

import hessop
from hessop.testing import SpectralOperator, nn_like_spectrum

A = SpectralOperator(nn_like_spectrum(300, seed=1), seed=2)


def final_line(err: str) -> str:
    """The last state tqdm drew (it redraws the line after each carriage return)."""
    return [s for s in err.replace("\n", "\r").split("\r") if s.strip()][-1]


def done_of(line: str) -> tuple[int, int]:
    n, total = re.search(r"(\d+)/(\d+)", line).groups()
    return int(n), int(total)


@pytest.mark.parametrize("method", ["hutchinson", "xtrace", "hutch++"])
def test_adaptive_trace_counts_the_plan_and_shows_stderr_against_rtol(method, capsys):
    r = hessop.trace(A, method=method, max_matvecs=89700, rtol=0.05, progress=True)
    line = final_line(capsys.readouterr().err)
    n, total = done_of(line)
    assert r.converged and n == total < 1000  # finished: the bar is full, and its total is what was planned
    assert total == r.num_matvecs - 2  # every probe (the pilot's too) or product, minus the symmetry probe
    assert f"{r.num_matvecs} products" in line
    rel = float(re.search(r"stderr ([\d.e+-]+) / 5e-02", line).group(1))
    assert rel == pytest.approx(r.stderr / abs(r.estimate), rel=0.05) and rel <= 0.05


def test_fixed_budget_trace_fills_with_every_block(capsys, monkeypatch):
    from hessop.solvers._progress import Progress

    seen, advance = [], Progress.advance

    def record(self, n=1):
        advance(self, n)
        seen.append((self.bar.n, self.bar.total))

    monkeypatch.setattr(Progress, "advance", record)
    hessop.trace(A, method="xtrace", max_matvecs=64, block_size=8, progress=True)
    assert done_of(final_line(capsys.readouterr().err)) == (64, 64)
    assert seen == [(8 * (i + 1), 64) for i in range(8)]  # one step per block of products, not one at the end


@pytest.mark.parametrize("method, unit", [("hutchinson", "probe"), ("xdiag", "matvec")])
def test_diagonal_bar(method, unit, capsys):
    hessop.diagonal(A, method=method, max_matvecs=40, progress=True)
    line = final_line(capsys.readouterr().err)
    assert done_of(line) == (40, 40) and unit in line and line.startswith(f"diagonal ({method})")


def test_density_bar_counts_lanczos_steps(capsys):
    hessop.density(A, num_probes=3, num_steps=20, progress=True)
    line = final_line(capsys.readouterr().err)
    assert done_of(line) == (60, 60) and "probe 3/3" in line


def test_sketch_bar(capsys):
    hessop.sketch(A, d=8)
    assert capsys.readouterr().err == ""  # hidden by default, as everywhere
    s = hessop.sketch(A, d=24, refine=True, progress=True)
    line = final_line(capsys.readouterr().err)
    assert done_of(line) == (48, 48) and s.num_matvecs == 48 + 2
