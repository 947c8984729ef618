"""Device choice and seeding, shared by every model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """Turn ``'auto'`` into CUDA when a GPU is present, else CPU; pass anything else to torch.

    In a process started by ``torchrun`` (``LOCAL_RANK`` in the environment), ``'auto'`` and
    ``'cuda'`` name this process's own GPU, ``cuda:LOCAL_RANK``.

    Parameters
    ----------
    device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'``… or a :class:`torch.device`.

    Returns
    -------
    The device to use.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto")  # CUDA when present  # doctest: +SKIP
    device(type='cuda')
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"`device`={device!r} is not a device: use 'auto', 'cpu' or 'cuda'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={device!r} asks for CUDA, but torch sees no GPU here: use 'auto' or 'cpu'.")
    if resolved.type == "cuda" and resolved.index is None and "LOCAL_RANK" in os.environ:
        # one GPU per process under torchrun
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return resolved


@contextlib.contextmanager
def seeded(random_state: int | None) -> Iterator[np.random.Generator]:
    """Seed torch inside the block without changing the caller's global random state.

    Yields a numpy generator derived from the same seed, for sampling batches. With
    ``random_state=None`` torch is left unseeded and the generator is fresh.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if random_state is not None:
            torch.manual_seed(random_state)
        yield np.random.default_rng(random_state)


def checks_on_host(device: torch.device) -> bool:
    """Whether a training step may read values of ``device`` on the host (convergence tests, early exits).

    True on CPU, where the host is the device and a read costs nothing; False on an
    accelerator, where each read stalls it until its queue drains, so the solvers of a step run
    fixed iteration counts instead.

    Examples
    --------
    >>> import torch
    >>> checks_on_host(torch.device("cpu")), checks_on_host(torch.device("cuda"))
    (True, False)
    """
    return torch.device(device).type == "cpu"
