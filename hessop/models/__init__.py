"""Small reference models for tests, examples, benchmarks and the command line."""

from .resnet import ResNet, resnet, resnet20, resnet32, resnet38
from .small import MLP, SmallCNN, random_batches

__all__ = ["MLP", "ResNet", "SmallCNN", "random_batches", "resnet", "resnet20", "resnet32", "resnet38"]
