"""Small reference models for tests, examples, benchmarks and the command line."""

from .small import MLP, SmallCNN, random_batches

__all__ = ["MLP", "SmallCNN", "random_batches"]
