"""The ``hessop`` console script: argument parsing, exit codes and one-sentence errors.

Exit codes: 0 ok; 1 an analysis failed (the report keeps the finished steps);
2 bad usage or input; 130 interrupted (finished steps saved, report marked
partial, ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Sequence

from .._collective import is_collective
from .errors import EXIT_ANALYSIS_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError

EPILOG = """\
exit codes: 0 ok, 1 an analysis failed, 2 bad usage or input, 130 interrupted
(finished steps are saved; rerun the same command with --resume to continue).
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``hessop`` argument parser with its ``demo`` and ``analyze`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="hessop",
        description="Read the spectrum of a neural network's loss Hessian and write a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hessop {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,analyze}")
    sub.required = True

    demo = sub.add_parser(
        "demo", help="train a small MLP on scikit-learn's digits and report its Hessian's spectrum",
        description=_wrap("Train a small MLP on scikit-learn's handwritten digits (no download) for a few "
                          "seconds, then compute the top eigenvalues, the trace, the spectral density, loss "
                          "landscapes and a layer-wise table."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--task", choices=("digits", "lm"), default="digits",
                      help="digits: an MLP on scikit-learn's digits (default); lm: a character-level GPT on the "
                      "Python standard library's source, with a block-wise table (embeddings, attention, MLP, "
                      "norms, head)")
    _common(demo, default_dtype="float64 for digits, float32 for lm", default_threads=1)

    analyze = sub.add_parser(
        "analyze", help="report the Hessian's spectrum of your own model and data",
        description=_wrap("Analyse your own model: --model and --data name factories as 'package.module:function' "
        "or 'path/to/file.py:function'. The model factory returns an nn.Module or a (module, loss_fn) pair "
        "(default loss: cross-entropy); the data factory returns a DataLoader, a list of (x, y) batches or one batch."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analyze.add_argument("--model", required=True, metavar="MODULE:FACTORY", help="builds the model")
    analyze.add_argument("--data", required=True, metavar="MODULE:FACTORY", help="builds the data")
    analyze.add_argument("--checkpoint", metavar="PATH", help="a torch.save'd state dict to load into the model")
    analyze.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    _common(analyze, default_dtype=None, default_threads=None)
    return parser


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=79)


def _common(p: argparse.ArgumentParser, default_dtype: str | None, default_threads: int | None) -> None:
    what = p.add_argument_group("analyses (none given: all of them)")
    what.add_argument("--eig", type=int, metavar="K", help="the K largest eigenvalues (Lanczos)")
    what.add_argument("--trace", action="store_true", help="the trace, with its standard error")
    what.add_argument("--density", action="store_true", help="the spectral density (stochastic Lanczos quadrature)")
    what.add_argument("--landscape", action="store_true", help="the loss along and between the top two eigenvectors")
    what.add_argument("--layerwise", action="store_true", help="top eigenvalue, trace and density of each block")
    what.add_argument("--blocks", "--groups", choices=("stages", "modules"), default="stages", dest="blocks",
                      action=_Renamed, help="layer-wise blocks: stages, one per top-level module (default), or "
                      "modules, one per module owning parameters (--groups: its old name)")
    run = p.add_argument_group("run")
    run.add_argument("--out", default="hessop-report", metavar="DIR", help="report folder (default: hessop-report)")
    run.add_argument("--budget", choices=("full", "small"), default="full",
                     help="work per analysis: full, or small for a run of a few seconds (default: full)")
    run.add_argument("--dtype", choices=("float32", "float64"), default=None,
                     help=f"precision of the analyses (default: {default_dtype or 'the model’s own'})")
    run.add_argument("--threads", type=int, default=default_threads, metavar="N",
                     help="torch CPU threads (default: " + ("1, the demo's model is too small to gain from more"
                                                            if default_threads else "torch's own") + ")")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out, skipping finished steps")
    run.add_argument("--comm", choices=("auto", "serial", "mpi", "torch"), default="auto",
                     help="processes: auto uses MPI when launched by mpiexec, torch.distributed when launched by "
                     "torchrun (default: auto)")
    show = p.add_argument_group("output")
    show.add_argument("--json", action="store_true", help="print the report's JSON to stdout")
    show.add_argument("--quiet", action="store_true", help="no progress bars, no summary line")
    show.add_argument("--debug", action="store_true", help="show tracebacks of errors")


class _Renamed(argparse.Action):
    """Stores the value; an option's old name (``--groups``) still works, with a note on stderr."""

    OLD = {"--groups": "--blocks"}

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.OLD:
            print(f"hessop: {option_string} is deprecated, use {self.OLD[option_string]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _version() -> str:
    from .. import __version__

    return __version__


GRACE = 1.0
"""Seconds a failing process under MPI leaves the launcher to forward its message before ending the job."""

SEED_LIMIT = 2**63
"""``--seed`` must lie in ``[0, SEED_LIMIT)`` (numpy and torch seeds are non-negative)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hessop`` command line; returns the exit code (see the module docstring).

    Under MPI a process that fails alone (its error was not raised on every
    process, so the others may be waiting in a collective) prints its message
    and ends the whole job with its exit code (``MPI_Abort``); an error raised
    on every process alike ends each of them with the same code, rank 0 printing.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # exits with code 2 and a usage line on bad options
    args.argv = argv
    args.lock, args.comm_obj, args.state_saved, args.failure = None, None, False, None
    try:
        code = _dispatch(args)
    except UsageError as exc:
        if args.debug:
            raise
        code, args.failure = EXIT_USAGE, exc
        _say(args, f"error: {exc}")
    except KeyboardInterrupt as exc:
        code, args.failure = EXIT_INTERRUPTED, exc
        if args.state_saved:
            _say(args, f"interrupted; steps that finished are saved in {args.out!r}, "
                       "rerun the same command with --resume to continue")
        else:
            _say(args, "interrupted before the run started, nothing was saved; rerun the same command")
    except Exception as exc:
        if args.debug:
            raise
        code, args.failure = EXIT_ANALYSIS_ERROR, exc
        _say(args, f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
    finally:
        if args.lock is not None:
            args.lock.release()
    return _end(args, code)


def _dispatch(args: argparse.Namespace) -> int:
    from .session import require

    if not 0 <= args.seed < SEED_LIMIT:
        raise UsageError(f"--seed {args.seed}: give a non-negative integer below 2**63, e.g. --seed 0")
    require("torch", "torch", f"hessop {args.command}")
    if args.command == "demo":
        if args.task == "digits":
            require("sklearn", "data", "hessop demo (its digits come with scikit-learn)")
        from .demo import demo

        return demo(args)
    from .analyze import analyze

    return analyze(args)


def _several(args: argparse.Namespace) -> bool:
    return args.comm_obj is not None and args.comm_obj.size > 1


def _say(args: argparse.Namespace, text: str) -> None:
    """Print an error once: rank 0 for an error every process raised alike, else the process that failed."""

    if not _several(args):
        print(f"hessop {args.command}: {text}", file=sys.stderr)
    elif not is_collective(args.failure):
        print(f"hessop {args.command}: rank {args.comm_obj.rank}: {text}", file=sys.stderr)
    elif args.comm_obj.rank == 0:
        print(f"hessop {args.command}: {text}", file=sys.stderr)


def _end(args: argparse.Namespace, code: int) -> int:
    """``code``; under MPI, a failure of this process alone ends the whole job (the others may be waiting)."""

    if code != 0 and _several(args) and not is_collective(args.failure):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(GRACE)
        args.comm_obj.abort(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
