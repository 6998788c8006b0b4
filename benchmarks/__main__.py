"""``python -m benchmarks``: the side-by-side comparison and the paper reproductions, in one run.

    python -m benchmarks                       # everything (17 minutes on 2 idle cores; 9 with cached ground truths)
    python -m benchmarks compare               # only the comparison with the other tools
    python -m benchmarks compare mlp-digits cnn-bn --repeats 1
    python -m benchmarks reproduce             # only the reproductions
    python -m benchmarks reproduce sketching ghorbani
    python -m benchmarks --quick               # smaller everything, for a smoke test (results not written)

The comparison replaces the "Against other tools" section of docs/performance.md;
the reproductions rewrite docs/reproductions.md and docs/img/repro_*.png.
Run it with the benchmark environment's Python (benchmarks/setup_env.sh).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
import time

from ._tools import replace_section, versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERFORMANCE = os.path.join(ROOT, "docs", "performance.md")
REPRODUCTIONS = os.path.join(ROOT, "docs", "reproductions.md")
SECTION = "## Against other tools (`python -m benchmarks`)"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_compare(models, repeats: int, write: bool, threads: int = 1) -> None:
    """Run the comparison; each model's table is kept in the cache, and the section shows every model's latest."""
    from . import compare
    from ._problems import CACHE

    argv = ["--repeats", str(repeats), "--threads", str(threads)] + (["--models", *models] if models else [])
    if not write:
        print("\n".join(compare.main(argv, log=log).values()))
        return

    def save(name: str, text: str) -> None:
        os.makedirs(CACHE, exist_ok=True)
        with open(os.path.join(CACHE, f"compare-{name}.md"), "w") as f:
            f.write(text)
        published = _published_blocks()
        parts = [compare.NOTES, ""]
        for key in compare.PROBLEMS:
            path = os.path.join(CACHE, f"compare-{key}.md")
            if os.path.exists(path):
                with open(path) as f:
                    parts.append(f.read())
            elif key in published:  # run on another machine or day: keep the block the page shows
                parts.append(published[key])
            else:
                parts.append(f"### {key}\n\nNot run yet: `python -m benchmarks compare {key}`.\n")
        replace_section(PERFORMANCE, SECTION, "\n".join(parts))
        log(f"wrote {name} into the '{SECTION[3:]}' section of {PERFORMANCE}")

    compare.main(argv, log=log, on_block=save)


def _published_blocks() -> dict[str, str]:
    """The per-model blocks the comparison section of docs/performance.md shows now, by model key."""
    with open(PERFORMANCE) as f:
        text = f.read()
    start = text.find(SECTION)
    if start < 0:
        return {}
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:] if end < 0 else text[start:end + 1]
    blocks = {}
    for chunk in section.split("\n### ")[1:]:
        command = re.search(r"`python -m benchmarks compare (\S+)", chunk)  # the heading is the problem's name
        if command and "Not run yet" not in chunk:
            blocks[command.group(1).rstrip("`")] = "### " + chunk.rstrip("\n") + "\n"
    return blocks


def run_reproductions(names, quick: bool, write: bool) -> None:
    from .reproduce import NAMES

    verdicts = []
    for name in names or NAMES:
        log(f"reproduction: {name}")
        mod = importlib.import_module(f".reproduce.{name}", __package__)
        load = os.getloadavg()[0]
        verdict = mod.run(quick=quick, log=log)
        verdict.load = load
        log(f"  done in {verdict.seconds:.0f} s")
        verdicts.append(verdict)
    if not write or quick:
        print("\n\n".join(f"## {v.title}\n\n{v.body}" for v in verdicts))
        return
    from ._problems import CACHE

    os.makedirs(CACHE, exist_ok=True)
    for verdict, name in zip(verdicts, names or NAMES):
        with open(os.path.join(CACHE, f"repro-{name}.md"), "w") as f:
            f.write(f"## {verdict.title}\n\nCommand: `{verdict.command}` ({verdict.seconds:.0f} s, load average "
                    f"{verdict.load:.1f} at the start).\n\n"
                    f"{verdict.body}\n")
    parts = [_header()]
    for name in NAMES:  # every reproduction's latest verdict, in a fixed order
        path = os.path.join(CACHE, f"repro-{name}.md")
        if os.path.exists(path):
            with open(path) as f:
                parts.append(f.read())
        else:
            parts.append(f"## {name}\n\nNot run yet: `python -m benchmarks reproduce {name}`.\n")
    with open(REPRODUCTIONS, "w") as f:
        f.write("\n".join(parts))
    log(f"wrote {REPRODUCTIONS}")


def _header() -> str:
    v = versions()
    return "\n".join([
        "# Reproductions of the source papers", "",
        "Each section re-runs one published observation with hessop at the scale of a 2-core CPU machine,",
        "shows a figure, and says plainly whether the result reproduces. Regenerate everything with",
        "`python -m benchmarks reproduce`, or one of them with `python -m benchmarks reproduce NAME`",
        "(NAME: ghorbani, sketching, pyhessian, layerwise). Each section gives its wall time and the",
        "machine's 1-minute load average when it started; on 2 cores, times taken beside another busy",
        "process are several times longer and only indicative.", "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", ""])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("what", nargs="?", choices=["all", "compare", "reproduce"], default="all")
    ap.add_argument("names", nargs="*", help="models (compare) or reproductions (reproduce) to run; default all")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each comparison case")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads while the comparison is timed (0: leave as is); ground truths and "
                         "reproductions use every core")
    ap.add_argument("--quick", action="store_true", help="small sizes, print instead of writing the docs")
    ap.add_argument("--no-write", action="store_true", help="print the results instead of writing the docs")
    args = ap.parse_args(argv)
    write = not (args.quick or args.no_write)
    if not write:
        os.environ.setdefault("HESSOP_BENCH_FIGURES", os.path.join(tempfile.gettempdir(), "hessop-bench-figures"))
        log(f"figures go to {os.environ['HESSOP_BENCH_FIGURES']} (the docs are not written)")
    start = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 1.0:
        log(f"warning: the 1-minute load average is {load:.1f}; on a 2-core machine another busy process "
            "makes these timings several times longer (results are still written, with the load noted)")
    if args.what in ("all", "compare"):
        models = args.names if args.what == "compare" else None
        if args.quick and not models:
            models = ["mlp-digits", "cnn-bn"]
        run_compare(models, 1 if args.quick else args.repeats, write, args.threads)
    if args.what in ("all", "reproduce"):
        run_reproductions(args.names if args.what == "reproduce" else None, args.quick, write)
    log(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
