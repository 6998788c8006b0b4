"""Benchmarks and paper reproductions of hessop (run with ``python -m benchmarks``; see benchmarks/README.md).

Importing this package needs only numpy and scipy: the other tools (PyHessian,
curvlinops, hessian-eigenthings) and PyTorch are imported by the benchmarks that
use them, when they run.
"""
