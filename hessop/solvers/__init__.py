"""Generic spectral solvers: they speak only the operator protocol and the array API."""
