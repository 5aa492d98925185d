"""CPU thread set-up ops of SGLang's CPU model runner."""

from __future__ import annotations

import os

import torch

from ._library import define


def _cpu_ids(spec: str) -> list[int]:
    """'0,1,4-6' -> [0, 1, 4, 5, 6]."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def init_cpu_threads(cpu_ids: str) -> str:
    """Bind this process to `cpu_ids` and use one torch thread per CPU; returns what was done."""
    ids = _cpu_ids(cpu_ids)
    if not ids:
        raise ValueError(f"init_cpu_threads_env: empty CPU list {cpu_ids!r}")
    os.sched_setaffinity(0, ids)
    torch.set_num_threads(len(ids))
    return f"bound to CPUs {ids}, {len(ids)} torch threads"


def initialize(size: int, rank: int) -> None:
    """The shared-memory all-reduce's set-up; pedagle's test kernels run one rank and need none."""
    if size != 1:
        raise NotImplementedError(
            f"shared-memory all-reduce (tp size {size}) is not implemented in pedagle's CPU test kernels: initialize"
        )


init_cpu_threads_env = define("init_cpu_threads_env(str cpu_ids) -> str", init_cpu_threads)
initialize_op = define("initialize(int size, int rank) -> ()", initialize)
