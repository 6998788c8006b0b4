"""One call convention (issue 20, item 2) and an API page that names only what exists.

Every public solver and analysis takes the operator (and ``k``, ``num_steps`` or ``d``) by position and
every option by keyword only; the algorithm is ``method=``; renamed keywords still work with a
``DeprecationWarning``; ``check_symmetric`` defaults to True everywhere. Every name docs/api.md
documents is importable from where the page says.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import hessop
from hessop import analysis
from hessop.testing import SpectralOperator

ROOT = Path(__file__).resolve().parents[1]

POSITIONAL = {  # function: the parameters that may be passed by position
    hessop.eigsh: ("A", "k"),
    hessop.trace: ("A",),
    hessop.diagonal: ("A",),
    hessop.density: ("A",),
    hessop.sketch: ("A", "d"),
    hessop.lanczos: ("A", "num_steps"),
    hessop.spectral_distance: ("a", "b"),
    analysis.layerwise: ("H",),
    analysis.block_spectrum: ("H", "k"),
    analysis.landscape_1d: ("H", "direction"),
    analysis.landscape_2d: ("H", "d1", "d2"),
    analysis.filter_normalized_direction: ("model_or_H",),
    analysis.CurvatureTracker: ("make_operator", "path"),
}


@pytest.mark.parametrize("fn", list(POSITIONAL), ids=lambda f: f.__name__)
def test_options_are_keyword_only(fn):
    params = inspect.signature(fn).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert tuple(positional) == POSITIONAL[fn]


def test_check_symmetric_defaults_to_true_everywhere():
    for fn in (hessop.eigsh, hessop.trace, hessop.diagonal, hessop.density, hessop.sketch, hessop.lanczos):
        assert inspect.signature(fn).parameters["check_symmetric"].default is True, fn.__name__
    with pytest.raises(ValueError, match="not symmetric"):
        hessop.lanczos(np.triu(np.ones((10, 10))), 3)  # lanczos used to skip the probe


A = SpectralOperator(np.linspace(0.0, 4.0, 40), seed=0)


@pytest.mark.parametrize("call", [
    lambda: hessop.eigsh(A, 2, "SA"),
    lambda: hessop.trace(A, "hutch++"),
    lambda: hessop.diagonal(A, "hutchinson"),
    lambda: hessop.density(A, 4),
    lambda: hessop.sketch(A, 5, "nystrom"),
    lambda: hessop.lanczos(A, 5, None),
    lambda: hessop.spectral_distance(np.ones(3), np.ones(3), "wasserstein"),
])
def test_an_option_passed_by_position_is_a_type_error(call):
    with pytest.raises(TypeError):
        call()


def test_old_spellings_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match=r"sketch\(kind=...\) is now sketch\(method=...\)"):
        old = hessop.sketch(A, 10, kind="nystrom", seed=1)
    new = hessop.sketch(A, 10, method="nystrom", seed=1)
    np.testing.assert_array_equal(old.eigenvalues, new.eigenvalues)
    with pytest.warns(DeprecationWarning, match="SketchResult.kind is now SketchResult.method"):
        assert old.kind == "nystrom" == old.method
    with pytest.warns(DeprecationWarning, match="max_matvecs"):
        t = hessop.trace(A, num_matvecs=24, seed=1)
    assert t.estimate == hessop.trace(A, max_matvecs=24, seed=1).estimate
    with pytest.raises(TypeError, match="both kind= and method="):
        hessop.sketch(A, 10, kind="nystrom", method="nystrom")


def _documented() -> list[str]:
    return re.findall(r"^::: ([\w.]+)$", (ROOT / "docs" / "api.md").read_text(), re.M)


def _resolve(path: str):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_every_name_documented_in_api_md_is_importable_from_there():
    names = _documented()
    assert len(names) > 30
    for path in names:
        if path.startswith(("hessop.backends.jax", "hessop.comm.mpi", "hessop.comm.torch_dist")):
            pytest.importorskip(path.split(".")[2] if "jax" in path else ("mpi4py" if "mpi" in path else "torch"))
        _resolve(path)  # raises if it does not exist where the page says


def test_names_said_to_be_reexported_from_hessop_are_in_its_all():
    text = (ROOT / "docs" / "api.md").read_text().split("\n\n")[1]
    said = set(re.findall(r"`hessop\.(\w+)`", text))
    assert {"as_operator", "CallableOperator", "spectral_distance", "lanczos"} <= said
    assert said <= set(hessop.__all__), said - set(hessop.__all__)
    for name in hessop.__all__:
        assert getattr(hessop, name) is not None
