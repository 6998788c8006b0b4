"""One command's run, what ``demo`` and ``analyze`` share: options, communicator, weights kept for resume, the steps.

A command builds a :class:`Session` from its parsed options, then hands
:func:`run` a *setup* function that returns the Hessian operator; :func:`run`
computes the chosen steps with the run state (:mod:`.run`, the run's folder)
and writes the report.

Steps run one by one through a :class:`Runner`, each saved as it finishes. A
solver interrupted by Ctrl-C may return what it has instead of raising; the
runner notices the interrupt through its own SIGINT handler, does not record
that step as finished (a resumed run redoes it with the same seed), and stops.
Whatever happens, the report is written from the steps that did finish, marked
``"partial"`` unless every step completed (:func:`execute`).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._collective import is_collective, together
from ..distributed import as_comm, world
from .errors import EXIT_ANALYSIS_ERROR, EXIT_INTERRUPTED, EXIT_OK, UsageError
from .report import write_report
from .run import RunLock, RunState, damaged
from .steps import BUDGETS, ORDER, STEPS, Budget, step_seed

MPI_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
"""Variables ``mpiexec`` sets (MPICH / Open MPI) by which ``--comm auto`` detects it."""


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""Variables ``torchrun`` sets, by which ``--comm auto`` detects it (``WORLD_SIZE`` above 1) and
``torch.distributed`` joins the job."""


def communicator(choice: str) -> Any:
    """``serial``, ``mpi``, ``torch`` or ``auto``: auto is the library's :func:`~hessop.distributed.world`
    when launched by ``mpiexec`` with more than one process (without importing mpi4py, which starts MPI),
    ``torch.distributed`` when launched by ``torchrun`` with more than one (:func:`torch_world`), else one process."""
    launched = any(os.environ.get(v, "1").isdigit() and int(os.environ.get(v, "1")) > 1 for v in MPI_ENV)
    if choice == "mpi" or (choice == "auto" and launched):
        require("mpi4py", "mpi", f"--comm {choice} under mpiexec")  # world() alone would fall back to one process
        return world()
    if choice == "torch" or (choice == "auto" and _under_torchrun()):
        return torch_world(choice)
    return as_comm(None)


def _under_torchrun() -> bool:
    size = os.environ.get("WORLD_SIZE", "1")
    if size.isdigit() and int(size) > 1 and "RANK" in os.environ:
        return True
    dist = sys.modules.get("torch.distributed")  # a script that started its own group and calls main()
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def torch_world(choice: str) -> Any:
    """The ``torch.distributed`` world as a hessop communicator, joining the ``torchrun`` job if need be.

    An uninitialised default group is initialised as ``init_device_mesh`` would
    (``init_process_group()`` with torch's default backends: gloo for CPU tensors,
    and nccl for CUDA ones where CUDA is available), so a model factory that calls
    ``init_device_mesh`` finds it ready; a group the caller started is used as it is.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError(f"--comm {choice}: this torch has no torch.distributed; use --comm mpi under mpiexec")
    if not dist.is_initialized():
        missing = [v for v in TORCHRUN_ENV if v not in os.environ]
        if missing:
            raise UsageError(f"--comm {choice}: no torchrun job to join (the environment lacks {', '.join(missing)}); "
                             "launch with torchrun --nproc-per-node N -m hessop analyze ...")
        try:
            dist.init_process_group()
        except Exception as exc:  # torch raises many kinds for a rendezvous that fails
            raise UsageError(f"--comm {choice}: cannot join the torchrun job ({type(exc).__name__}: {exc}); check "
                             "the launch (torchrun --nproc-per-node N -m hessop analyze ...)") from exc
        atexit.register(_leave, dist)
    from ..comm.torch_dist import TorchDistComm

    return TorchDistComm()


def _leave(dist: Any) -> None:
    """Destroy the process group this command started, at exit (torch warns about one left behind)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def chosen_steps(args: Any) -> tuple[list[str], Budget]:
    """The analysis steps and budget the options ask for (no analysis flag: every analysis)."""
    budget = replace(BUDGETS[args.budget], blocks=args.blocks)
    if args.eig is not None:
        if args.eig < 1:
            raise UsageError(f"--eig {args.eig}: ask for at least one eigenvalue, e.g. --eig 5")
        budget = replace(budget, k=args.eig)
    picked = {
        "eigenvalues": args.eig is not None,
        "trace": args.trace,
        "density": args.density,
        "landscape_1d": args.landscape,
        "landscape_2d": args.landscape,
        "layerwise": args.layerwise,
    }
    if not any(picked.values()):
        picked = dict.fromkeys(picked, True)
    if args.landscape:  # the landscapes follow the top two eigenvectors
        picked["eigenvalues"] = True
        budget = replace(budget, k=max(budget.k, 2))
    return [name for name in ORDER if picked[name]], budget


def torch_dtype(name: str | None) -> Any:
    """A torch dtype from ``float32`` / ``float64`` (``None``: keep the model's)."""
    import torch

    return None if name is None else {"float32": torch.float32, "float64": torch.float64}[name]


def torch_device(name: str | None) -> str:
    """``--device``, checked: CUDA is refused with a clear message when there is none."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    return name


@dataclass
class Session:
    """One command's run: where it writes, what it computes, how it reports progress."""

    args: Any
    config: dict
    steps: list[str]
    budget: Budget
    comm: Any
    extra_steps: int = 0
    info: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    @property
    def writer(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.comm.rank == 0

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown (rank 0, without ``--quiet``)."""
        return self.writer and not self.args.quiet

    @property
    def out(self) -> Path:
        """The report folder."""
        return Path(self.args.out)

    def keep_weights(self, model: Any, state: RunState) -> None:
        """Save the weights the analyses see, or load them back when resuming (same weights, same numbers)."""
        import torch

        path = state.array_path("model.pt")
        if state.steps:
            if not path.is_file():
                raise UsageError(f"--resume: {path} is missing; delete {str(self.out)!r} and run again")
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # torch raises many kinds for a damaged file or a state dict that does not fit
                raise damaged(path, f"not the weights this run saved: {type(exc).__name__}") from exc
        elif self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        if self.comm.size > 1:  # every process analyses rank 0's weights, however the factory initialised them
            model.load_state_dict(self.comm.broadcast(model.state_dict() if self.writer else None))


def require(module: str, extra: str, what: str) -> None:
    """Refuse to start, with the install command, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}, which is not installed; pip install 'hessop[{extra}]'")


def prepare(args: Any, comm: Any) -> None:
    """Checks before any work (options, the report folder and its lock), failing on every process together.

    Rank 0 takes the folder's lock (:class:`~hessop.cli.run.RunLock`), which
    also proves the folder writable, before a model is built or trained.
    """
    args.comm_obj = comm
    require("matplotlib", "plot", "the report's figures")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: give a positive number of threads")

    def lock() -> None:
        if comm.rank == 0:
            args.lock = RunLock.acquire(Path(args.out), " ".join(["hessop", *map(shlex.quote, args.argv)]))

    together(comm, lock, known=(UsageError,))


# -- running the steps -----------------------------------------------------------------------------
class Runner:
    """Runs named steps, skipping those the state already holds, with one progress bar.

    Use as a context manager: inside it Ctrl-C is noticed even when a solver
    swallows the KeyboardInterrupt to return a partial result.
    """

    def __init__(self, state: RunState, total: int, progress: bool):
        self.state = state
        self.interrupted = False
        self._bar = tqdm(total=total, desc="hessop", unit="step", disable=not progress, leave=False)
        self._previous: Any = None

    def __enter__(self) -> Runner:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._bar.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def step(self, name: str, fn: Callable[[], dict]) -> dict:
        """The result of step ``name``: saved from an earlier run, or computed now and saved at once."""
        if not self.state.done(name):
            self._bar.set_postfix_str(name)
            start = time.perf_counter()
            result = fn()
            if self.interrupted:  # the step returned a partial result after Ctrl-C: do not keep it
                raise KeyboardInterrupt
            self.state.finish(name, result, time.perf_counter() - start)
        self._bar.update()
        return self.state.result(name)


def execute(
    state: RunState,
    body: Callable[[Runner], None],
    total: int,
    progress: bool,
    write_report: Callable[[RunState, str, str | None], Path | None],
    debug: bool = False,
) -> tuple[int, str, str | None, BaseException | None]:
    """Run ``body`` and write the report whatever happens.

    Returns
    -------
    (exit_code, status, error, exception)
        ``status`` is ``"complete"``, ``"partial"`` (interrupted) or ``"failed"``;
        ``exception`` is what stopped the run (``None`` when complete).
    """
    status, error, code = "complete", None, EXIT_OK
    failure: BaseException | None = None
    try:
        with Runner(state, total, progress) as runner:
            body(runner)
    except KeyboardInterrupt as exc:
        status, code, failure = "partial", EXIT_INTERRUPTED, exc
        error = "interrupted; rerun the same command with --resume to continue"
    except UsageError:
        raise
    except Exception as exc:  # an analysis failed: keep what finished and say what broke
        if debug:
            traceback.print_exc()
        status, code, failure = "failed", EXIT_ANALYSIS_ERROR, exc
        error = f"{type(exc).__name__}: {exc}"
    write_report(state, status, error)
    return code, status, error, failure


def run(session: Session, setup: Callable[[Runner, RunState], Any]) -> int:
    """Run ``setup`` (which returns the operator) and the session's steps; write the report; return the exit code."""
    args = session.args
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    def start() -> RunState:
        state = RunState.start(session.out, session.config, args.resume, writer=session.writer)
        state.save()  # from now on an interrupted run can be resumed, even before its first step finishes
        return state

    state = together(session.comm, start, known=(UsageError,))
    args.state_saved = True
    session.info["command"] = " ".join(["hessop", *map(shlex.quote, args.argv)])

    def body(runner: Runner) -> None:
        H = setup(runner, state)
        for name in session.steps:
            seed = step_seed(args.seed, name)
            runner.step(name, functools.partial(STEPS[name], H, session.budget, seed, state, session.progress))

    def report(st: RunState, status: str, error: str | None) -> None:
        if session.writer:
            session.report = write_report(session.out, st, status, error, session.info)

    total = len(session.steps) + session.extra_steps
    code, status, error, failure = execute(state, body, total, session.progress, report, args.debug)
    args.failure = failure
    if session.writer:
        _announce(session, status, error)
    elif error and not is_collective(failure):  # this process alone failed: say so before the job ends
        print(f"hessop: rank {session.comm.rank}: {error}", file=sys.stderr)
    return code


def _announce(session: Session, status: str, error: str | None) -> None:
    doc = session.report
    if session.args.json:
        print(json.dumps(doc, indent=1))
    if error:
        print(f"hessop: {error}", file=sys.stderr)
    if not session.args.quiet:
        where = session.out / "report.html"
        headline = []
        steps = doc.get("steps", {})
        if "eigenvalues" in steps:
            headline.append(f"top eigenvalue {steps['eigenvalues']['eigenvalues'][0]:.4g}")
        if "trace" in steps:
            headline.append(f"trace {steps['trace']['trace']:.4g} ± {steps['trace']['stderr']:.2g}")
        summary = f" ({', '.join(headline)})" if headline else ""
        print(f"hessop: {status} report in {where}{summary}", file=sys.stderr)
