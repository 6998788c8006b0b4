"""Several of the scripts beside this one in one launch: ``job.py OUTDIR SCRIPT[:ARG,ARG] ...``.

Starting a process that imports torch (or JAX) costs seconds on the test machine; scripts that
need the same number of ranks share one launch. Each script runs in turn in these processes, with
``sys.argv`` as if it were launched alone, its output folder being ``OUTDIR/<stem>[-<args>]``
(``split.py:results`` writes to ``OUTDIR/split-results``). A script that ends the job on purpose (a
fault that must abort it) comes last.
"""

import os
import runpy
import sys

outdir, specs = sys.argv[1], sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
for spec in specs:
    script, _, joined = spec.partition(":")
    args = joined.split(",") if joined else []
    out = os.path.join(outdir, "-".join([script.removesuffix(".py"), *args]))
    os.makedirs(out, exist_ok=True)
    sys.argv = [os.path.join(here, script), out, *args]
    runpy.run_path(sys.argv[0], run_name="__main__")
