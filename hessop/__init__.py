"""hessop: the Hessian of a neural network's loss as a linear operator, and its spectrum, fast."""

from .factory import hessian
from .operator import HessianOperator

__all__ = ["hessian", "HessianOperator"]
__version__ = "0.1.0"
