#!/usr/bin/env bash
# The benchmark environment: the system Python's packages (torch, numpy, scipy, hessop's
# dependencies) plus the tools hessop is compared with. The tools are installed with --no-deps
# so that pip never replaces the installed torch; their small pure-Python dependencies are
# listed explicitly. None of this is a dependency of hessop itself.
set -euo pipefail
ENV="${1:-/tmp/benchenv}"
python -m venv --system-site-packages "$ENV"
"$ENV/bin/pip" install --no-deps \
    pyhessian==0.1 \
    curvlinops-for-pytorch==3.0.1 \
    backpack-for-pytorch==1.7.1 einconv==0.1.0 einops==0.8.2 linear-operator==0.6.1 unfoldnd==0.2.3 \
    hessian-eigenthings==1.0.0a5 \
    matfree==0.6.3
"$ENV/bin/python" - <<'PY'
import curvlinops, hessian_eigenthings, matfree, pyhessian, torch
print("benchmark environment ready: torch", torch.__version__)
PY
