"""Factories named on the command line by tests/mpi/cli.py: the same 25 samples in every data form of docs/cli.md.

A factory that takes ``rank`` and ``size`` returns that process's own shard; one
that does not returns all the data. Every form holds the same samples, so every
form's Hessian is the same matrix, on any number of processes.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

SIZES = (4, 6, 3, 5, 7)


def model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    return model, torch.nn.CrossEntropyLoss()


def _all(nan_in=None):
    gen = np.random.default_rng(2)
    x = torch.from_numpy(gen.standard_normal((sum(SIZES), 3)))
    y = torch.from_numpy(gen.integers(0, 3, sum(SIZES)))
    if nan_in is not None:
        x[nan_in, 0] = float("nan")
    return x, y


def _batches(nan_in=None):
    x, y = _all(nan_in)
    edges = np.cumsum((0,) + SIZES)
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def list_whole():
    return _batches()


def list_own(rank, size):
    return _batches()[rank::size]


def loader_whole():
    return DataLoader(TensorDataset(*_all()), batch_size=6)


def loader_own(rank, size):
    x, y = _all()
    return DataLoader(TensorDataset(x[rank::size], y[rank::size]), batch_size=6)


def batch_whole():
    return _all()


def batch_own(rank, size):
    x, y = _all()
    return x[rank::size], y[rank::size]


def empty_on_rank_1(rank, size):
    return [] if rank == 1 else _batches()


def nan_on_rank_1(rank, size):
    return _batches(nan_in=14)[rank::size]  # sample 14 is in batch 3, rank 1's second batch
