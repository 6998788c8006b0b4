"""The report folder: ``report.json``, one PNG per figure, ``report.md`` and a self-contained ``report.html``.

The report is built from the run state alone (finished steps' numbers), first
as a list of :class:`Section` (text, one table, one figure), then rendered to
Markdown and to HTML with the figures embedded, so the HTML file can be mailed
on its own.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import figures
from .run import RunState
from .steps import ORDER, TITLES


@dataclass
class Section:
    """One part of the report: a title, paragraphs, an optional table and an optional figure."""

    title: str
    text: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figure: str | None = None


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits, booleans as yes/no, None as a dash."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return "—" if x is None else str(x)


def write_report(out: Path, state: RunState, status: str, error: str | None, info: dict) -> dict:
    """Write the whole report folder from ``state``; returns the JSON document written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {name: state.result(name) for name in state.complete_steps}
    pictures = _draw(out, steps)
    doc = {
        "status": status,
        "error": error,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "info": dict(info),
        "config": state.config,
        "steps": steps,
        "seconds": {name: state.steps[name]["seconds"] for name in state.complete_steps},
        "missing": [name for name in state.config.get("steps", []) if name not in steps],
        "figures": pictures,
    }
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    sections = build_sections(doc)
    (out / "report.md").write_text(to_markdown(doc, sections))
    (out / "report.html").write_text(to_html(doc, sections, out))
    return doc


def _draw(out: Path, steps: dict) -> dict[str, str]:
    pictures = {}
    top = steps.get("eigenvalues", {}).get("eigenvalues")
    for name, draw in figures.DRAW.items():
        if name in steps:
            path = out / f"{name}.png"
            if name == "density":
                draw(steps[name], path, top=top)
            else:
                draw(steps[name], path)
            pictures[name] = path.name
    return pictures


def build_sections(doc: dict) -> list[Section]:
    """The report's sections, in order, from the JSON document."""
    steps, info = doc["steps"], doc["info"]
    summary = Section("Summary", header=["quantity", "value"])
    for key, value in info.items():
        if key != "command":
            summary.rows.append([key.replace("_", " "), fmt(value)])
    if "train" in steps:
        summary.rows += _training(steps["train"])
    if "eigenvalues" in steps:
        summary.rows.append(["top eigenvalue λ₁", fmt(steps["eigenvalues"]["eigenvalues"][0])])
    if "trace" in steps:
        tr = steps["trace"]
        summary.rows.append(["trace", f"{fmt(tr['trace'])} ± {fmt(tr['stderr'], 2)}"])
    sections = [summary]
    figs = doc["figures"]
    for name in ORDER:
        if name in steps:
            section = _SECTION[name](steps[name], figs.get(name))
            section.text[-1] += f" ({doc['seconds'][name]:.1f} s)"
            sections.append(section)
    sections.append(_configuration(doc["config"]))
    return sections


def _training(t: dict) -> list[list[str]]:
    """Summary rows of the demo's training: the digits MLP (epochs, accuracy) or the language model (steps, nats)."""
    if "epochs" in t:
        return [
            ["training", f"{t['epochs']} epochs of Adam (lr {fmt(t['lr'])}, batch {t['batch_size']})"],
            ["train loss / accuracy", f"{fmt(t['train_loss'])} / {100 * t['train_accuracy']:.1f}%"],
            ["test loss / accuracy", f"{fmt(t['test_loss'])} / {100 * t['test_accuracy']:.1f}%"],
        ]
    return [
        ["training", f"{t['steps']} steps of AdamW (lr {fmt(t['lr'])}, batch {t['batch_size']} windows)"],
        ["train / validation loss (nats per character)", f"{fmt(t['train_loss'])} / {fmt(t['val_loss'])}"],
    ]


def _configuration(config: dict) -> Section:
    s = Section("Configuration", header=["setting", "value"])
    s.text.append("Everything that decides the numbers: the same configuration and seed give the same report.")
    for key, value in config.items():
        if isinstance(value, dict):
            s.rows += [[f"{key}.{k}", fmt(v)] for k, v in value.items()]
        else:
            s.rows.append([key, ", ".join(map(str, value)) if isinstance(value, list) else fmt(value)])
    return s


def _eigen(res: dict, fig: str | None) -> Section:
    s = Section(TITLES["eigenvalues"], figure=fig, header=["i", "λᵢ", "relative residual", "converged"])
    s.text.append(
        f"Thick-restart Lanczos, {res['num_matvecs']} Hessian-vector products (stopped: {res['stopped']}). "
        "The relative residual ‖Hv − λv‖ / max(|λ|, ‖H‖) is each pair's backward error."
    )
    if res.get("requested"):
        s.text.append(f"{res['requested']} eigenvalues were asked for (--eig), but the model has only "
                      f"{len(res['eigenvalues']) + 1} parameters: these are its {len(res['eigenvalues'])} largest, "
                      "all but the smallest (for every eigenvalue, compute H.to_dense() and numpy.linalg.eigvalsh).")
    for i, (lam, r, c) in enumerate(zip(res["eigenvalues"], res["residual_norms"], res["converged"]), start=1):
        s.rows.append([str(i), fmt(lam, 6), fmt(r, 2), fmt(bool(c))])
    return s


def _trace(res: dict, fig: str | None) -> Section:
    s = Section(TITLES["trace"], header=["estimate", "standard error", "mean eigenvalue", "products"])
    s.text.append(
        f"Stochastic trace estimation ({res['method']}, "
        f"{'converged to' if res['converged'] else 'stopped at the budget before'} "
        "the requested relative standard error); the standard error is the estimator's own."
    )
    if res.get("calibrated") is False:
        s.text.append("Too few samples for the standard error to be calibrated: read it as a rough guide, not as "
                      "a 95% interval (see docs/numerics.md).")
    s.rows.append([fmt(res["trace"], 6), fmt(res["stderr"], 3), fmt(res["mean_eigenvalue"]), str(res["num_matvecs"])])
    return s


def _density(res: dict, fig: str | None) -> Section:
    s = Section(TITLES["density"], figure=fig)
    s.text.append(
        f"Stochastic Lanczos quadrature: {res['num_probes']} probes of {res['num_steps']} Lanczos steps "
        f"({res['num_matvecs']} products), smoothed with a Gaussian kernel of width {fmt(res['sigma'], 3)}. "
        f"Mass on negative eigenvalues (below −σ, the resolution): {fmt(res['negative_mass'], 3)}."
    )
    return s


def _line(res: dict, fig: str | None) -> Section:
    s = Section(TITLES["landscape_1d"], figure=fig, header=["direction", "λ", "slope gᵀv", "loss at ±radius"])
    s.text.append(
        f"Loss along unit eigenvectors, |α| ≤ {fmt(res['radius'], 3)} (where the quadratic model of v₁ rises by 2); "
        "dashed: the quadratic model L₀ + α gᵀv + ½λα²."
    )
    for c in res["curves"]:
        ends = f"{fmt(c['losses'][0])} / {fmt(c['losses'][-1])}"
        s.rows.append([c["direction"], fmt(c["eigenvalue"]), fmt(c["slope"], 3), ends])
    return s


def _plane(res: dict, fig: str | None) -> Section:
    s = Section(TITLES["landscape_2d"], figure=fig)
    s.text.append(
        f"Loss at θ + αv₁ + βv₂ on a {len(res['alphas'])} × {len(res['betas'])} grid, "
        f"|α|, |β| ≤ {fmt(res['radius'], 3)}; "
        f"loss at the centre {fmt(res['center_loss'])}."
    )
    return s


def _layers(res: dict, fig: str | None) -> Section:
    cols = ["block", "num_params", "top_eigenvalue", "trace", "trace_stderr", "wasserstein_to_full",
            "jensen_shannon_to_full"]
    extra = [k for k in ("ggn_top_eigenvalue", "ggn_trace") if res["rows"] and k in res["rows"][0]]
    s = Section(TITLES["layerwise"], figure=fig, header=[c.replace("_", " ") for c in cols + extra])
    s.text.append(
        "The diagonal block of the Hessian for each group of parameters (all others fixed): its top eigenvalue, "
        "its trace with a standard error, and the distances of its spectral density to the whole network's "
        "(Wasserstein-1 in eigenvalue units, Jensen-Shannon in [0, 1])."
    )
    for row in [*res["rows"], {**res["full"], "block": "(whole network)"}]:
        s.rows.append([fmt(row.get(c)) for c in cols + extra])
    return s


_SECTION = {"eigenvalues": _eigen, "trace": _trace, "density": _density, "landscape_1d": _line,
            "landscape_2d": _plane, "layerwise": _layers}


def _banner(doc: dict) -> str | None:
    if doc["status"] == "complete":
        return None
    missing = ", ".join(doc["missing"]) or "none"
    return f"{doc['status'].upper()} report: {doc['error']}. Steps not done: {missing}."


def to_markdown(doc: dict, sections: list[Section]) -> str:
    """The report as Markdown, with the figures as links to the PNG files beside it."""
    lines = ["# hessop curvature report", ""]
    if (b := _banner(doc)) is not None:
        lines += [f"> **{b}**", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [t + "\n" for t in s.text]
        if s.header:
            lines.append("| " + " | ".join(s.header) + " |")
            lines.append("|" + "---|" * len(s.header))
            lines += ["| " + " | ".join(r) + " |" for r in s.rows]
            lines.append("")
        if s.figure:
            lines += [f"![{s.title}]({s.figure})", ""]
    lines += ["---", "", f"`{doc['info'].get('command', '')}` · {doc['created']}", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #1f4e79;padding-bottom:.3rem}
h2{font-size:1.2rem;margin-top:2rem;color:#1f4e79}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .7rem;text-align:right}
th{background:#f3f6fa}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.8rem 0}
.banner{background:#fff3cd;border:1px solid #e0b100;padding:.6rem 1rem;border-radius:4px}
footer{margin-top:3rem;color:#666;font-size:.8rem}
"""


def to_html(doc: dict, sections: list[Section], out: Path) -> str:
    """The report as one HTML file with its figures embedded (no file beside it is needed)."""
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<title>hessop curvature report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>hessop curvature report</h1>"]
    if (b := _banner(doc)) is not None:
        parts.append(f"<p class='banner'><strong>{e(b)}</strong></p>")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        if s.header:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in s.rows]
            parts.append("</table>")
        if s.figure:
            data = base64.b64encode((out / s.figure).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{e(s.title)}' src='data:image/png;base64,{data}'>")
    command = e(doc["info"].get("command", ""))
    parts.append(f"<footer><code>{command}</code> · {e(doc['created'])}</footer></body></html>")
    return "\n".join(parts)
