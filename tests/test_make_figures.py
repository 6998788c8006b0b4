"""docs/make_figures.py keeps working: it covers every figure the docs show and draws one at tiny sizes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def make_figures():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_figure_of_the_docs_has_a_maker(make_figures, capsys):
    assert make_figures.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    for page in ("analyses.md", "cli.md"):
        for stem in re.findall(r"\(img/([\w-]+)\.png\)", (DOCS / page).read_text(encoding="utf-8")):
            if stem.startswith("repro_"):  # drawn by benchmarks/reproduce
                continue
            assert stem in names or (stem.startswith("demo_") and "demo" in names), f"nothing draws img/{stem}.png"


def test_quick_figure_is_written(make_figures, tmp_path):
    assert make_figures.main(["--quick", "--out", str(tmp_path), "landscape_1d"]) == 0
    png = tmp_path / "landscape_1d.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
