"""The typed rows the analyses return: one dataclass per kind of row, each serialising itself.

:class:`LayerwiseRow` (one block of :func:`~hessop.analysis.layerwise.layerwise`),
:class:`GaussNewtonRow` (one block of
:func:`~hessop.analysis.gauss_newton.gauss_newton_decomposition`) and
:class:`TrackRecord` (one line of a :class:`~hessop.analysis.tracking.CurvatureTracker`
file). ``to_dict()`` gives the JSON-ready form (optional numbers that were not
measured are left out), ``from_dict()`` reads it back. Reading a field with
``row["name"]``, as when rows were dicts, still works but is deprecated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .._warnings import warn

__all__ = ["LayerwiseRow", "GaussNewtonRow", "TrackRecord"]


def _plain(v: Any) -> Any:
    """A JSON value from a number, a numpy scalar or array, or a list of them."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class _Row:
    """Shared behaviour of the rows: ``to_dict``/``from_dict`` and the deprecated dict-style reading."""

    _OPTIONAL: tuple[str, ...] = ()
    """Fields left out of ``to_dict()`` when they are ``None`` (not measured)."""

    def to_dict(self) -> dict:
        """The row as a JSON-ready dict."""
        out = {}
        for f in dataclasses.fields(cast(Any, self)):
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The row back from :meth:`to_dict` (unknown keys are an error: not a row of this kind)."""
        names = {f.name for f in dataclasses.fields(cast(Any, cls))}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; is this a saved {cls.__name__}?")
        return cls(**dict(d))

    def __getitem__(self, key: str) -> Any:
        warn(f"{type(self).__name__} is a dataclass now: read row.{key} instead of row[{key!r}]",
             DeprecationWarning)
        value = self.to_dict().get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """``row.get(name, default)``, deprecated like ``row[name]``."""
        try:
            return self[key]
        except KeyError:
            return default


_MISSING = object()


@dataclass(frozen=True)
class LayerwiseRow(_Row):
    """One block of the layer-wise analysis (or the whole network, ``block="full"``).

    Attributes
    ----------
    block : str
    num_params : int
    top_eigenvalue : float
    eigenvalues : list of float
        The top ``k``, descending.
    converged : bool
    trace, trace_stderr : float
    wasserstein_to_full, jensen_shannon_to_full : float or None
        Distances of the block's density to the whole network's (None for the whole).
    ggn_top_eigenvalue, ggn_trace, ggn_trace_stderr : float or None
        The Gauss-Newton block's, when a GGN operator was given.
    """

    block: str
    num_params: int
    top_eigenvalue: float
    eigenvalues: list
    converged: bool
    trace: float
    trace_stderr: float
    wasserstein_to_full: float | None = None
    jensen_shannon_to_full: float | None = None
    ggn_top_eigenvalue: float | None = None
    ggn_trace: float | None = None
    ggn_trace_stderr: float | None = None

    _OPTIONAL = ("wasserstein_to_full", "jensen_shannon_to_full", "ggn_top_eigenvalue", "ggn_trace",
                 "ggn_trace_stderr")


@dataclass(frozen=True)
class GaussNewtonRow(_Row):
    """One block of the Gauss-Newton decomposition ``H_l = G_l + R_l`` (or the whole, ``block="full"``).

    Eigenvalues are the top ``k``, descending; ``residual_trace`` is ``Tr(H_l - G_l)``
    from paired probes, with its own standard error; the negative masses (mass below
    minus the density's resolution, :meth:`~hessop.solvers.density.SpectralDensity.negative_mass`)
    are None without densities.
    """

    block: str
    num_params: int
    hessian_eigenvalues: list
    hessian_converged: bool
    hessian_trace: float
    hessian_trace_stderr: float
    ggn_eigenvalues: list
    ggn_converged: bool
    ggn_trace: float
    ggn_trace_stderr: float
    residual_trace: float
    residual_trace_stderr: float
    hessian_negative_mass: float | None = None
    ggn_negative_mass: float | None = None

    _OPTIONAL = ("hessian_negative_mass", "ggn_negative_mass")


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float, or None where it is missing or not finite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class TrackRecord(_Row):
    """One curvature measurement during training, one line of a tracking file.

    Attributes
    ----------
    step : int
        The counter's value at the measurement (a step or an epoch: ``unit`` says which;
        the file stores it under that name).
    unit : {"step", "epoch"}
    time : float
        Unix time of the measurement.
    num_params : int
    top_eigenvalues, residual_norms : list of float, or None when not asked for
    converged : bool or None
    trace, trace_stderr : float or None
    density : dict or None
        ``grid``, ``values``, ``negative_mass`` and ``negative_mass_below`` (minus the
        density's resolution, the threshold of that mass).
    num_matvecs : int
    seconds : float or None
        Time the measurement took.
    extra : dict
        The numbers the training loop passed (``loss=...``), stored at the top level of the line.
    """

    step: int
    unit: str
    time: float
    num_params: int
    num_matvecs: int
    top_eigenvalues: list | None = None
    residual_norms: list | None = None
    converged: bool | None = None
    trace: float | None = None
    trace_stderr: float | None = None
    density: dict | None = None
    seconds: float | None = None
    extra: dict = field(default_factory=dict)

    _MEASURED = ("num_params", "top_eigenvalues", "residual_norms", "converged", "trace", "trace_stderr",
                 "density", "num_matvecs")

    def to_dict(self) -> dict:
        """The line of the tracking file: the counter under its unit's name, the loop's numbers, the measurement."""
        out: dict[str, Any] = {self.unit: int(self.step), "unit": self.unit, "time": self.time}
        out.update({k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in self.extra.items()})
        for name in self._MEASURED:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.seconds is not None:
            out["seconds"] = self.seconds
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrackRecord:
        """A record back from a line of a tracking file (keys it does not know are the loop's ``extra``)."""
        d = dict(d)
        unit = d.pop("unit", "step")
        if unit not in d:
            raise ValueError(f"a tracking record holds no {unit!r} counter; is this a tracking file?")
        known = {f.name for f in dataclasses.fields(cls)} - {"step", "unit", "extra"}
        fields = {k: d.pop(k) for k in list(d) if k in known}
        step = d.pop(unit)
        fields.setdefault("time", float("nan"))
        fields.setdefault("num_params", 0)
        fields.setdefault("num_matvecs", 0)
        return cls(step=step, unit=unit, extra=d, **fields)
