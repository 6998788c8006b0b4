"""Launched by tests/test_cli.py under mpiexec: ``hessop analyze`` on two processes, several runs in one job.

``python cli.py OUTDIR``: each case calls the command line's ``main`` in this process (as
``mpiexec hessop analyze`` would), records its exit code, standard error and JSON report to
``OUTDIR/<case>.rank<r>.json``, and goes on, because each of these runs must end on every process
together. The last case fails on rank 1 alone, so it must end the whole job (exit status 1).
"""

import contextlib
import io
import json
import sys
import time
from pathlib import Path

from hessop.cli import steps as cli_steps
from hessop.cli.main import main
from hessop.distributed import world

outdir = Path(sys.argv[1])
comm = world()
FACTORIES = str(Path(__file__).with_name("cli_factories.py"))


def analyze(case, data, *extra, capture=True):
    out, err = io.StringIO(), io.StringIO() if capture else sys.stderr
    argv = ["analyze", "--model", f"{FACTORIES}:model", "--data", f"{FACTORIES}:{data}", "--dtype", "float64",
            "--budget", "small", "--threads", "1", "--eig", "3", "--out", str(outdir / case), "--quiet", "--json",
            *extra]
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    record = {"seconds": round(time.perf_counter() - start, 3), "code": code, "stderr": err.getvalue(),
              "report": json.loads(out.getvalue()) if out.getvalue() else None}
    (outdir / f"{case}.rank{comm.rank}.json").write_text(json.dumps(record))


for form in ("list_whole", "list_own", "loader_whole", "loader_own", "batch_whole", "batch_own"):
    analyze(form, form)
analyze("empty", "empty_on_rank_1")
analyze("nan", "nan_on_rank_1")
comm.barrier()

if comm.rank == 1:  # the last case: an analysis that fails on this process alone
    def broken(*args):
        raise RuntimeError("rank 1's eigenvalue step broke")

    cli_steps.STEPS["eigenvalues"] = broken
(outdir / "alone.start").write_text(repr(time.time()))
analyze("alone", "list_own", capture=False)
