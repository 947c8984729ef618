"""What every model shares: its configuration, loss history, device, and ``save``/``load``."""

from __future__ import annotations

import os
from typing import Any, Self

import torch
from torch import nn

from ..ot import IndexedClouds, PointClouds
from ._device import resolve_device


class Model(nn.Module):
    """Base class of the models in :mod:`spatialot.models`.

    A subclass passes its constructor arguments (plain Python values only) to
    ``super().__init__(**config)``, builds its layers, and keeps any fitted non-trainable state
    (scales, reference measures…) in buffers, so that :meth:`save` and :meth:`load` restore a
    model exactly. ``history`` holds the training loss of every step taken so far.

    Examples
    --------
    A model holding one buffer, saved and read back:


    >>> import torch
    >>> class Scale(Model):
    ...     def __init__(self, dim: int):
    ...         super().__init__(dim=dim)
    ...         self.register_buffer("scale", torch.ones(dim))
    >>> model = Scale(3)
    >>> model.save("scale.pt")  # doctest: +SKIP
    >>> Scale.load("scale.pt").config  # doctest: +SKIP
    {'dim': 3}
    """

    def __init__(self, **config: Any):
        super().__init__()
        self.config = config
        self.history: list[float] = []

    @property
    def device(self) -> torch.device:
        """Device of the parameters (or buffers)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _check_family(self, family: PointClouds | IndexedClouds) -> None:
        """Refuse input that is not a family of clouds of the dimension the model was built for."""
        if not isinstance(family, PointClouds | IndexedClouds):
            raise TypeError(f"Expected PointClouds or IndexedClouds, got {type(family).__name__}.")
        if family.dim != self.config["dim"]:
            raise ValueError(
                f"The clouds have dimension {family.dim}, but the model was built for {self.config['dim']}."
            )

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration, weights, buffers and loss history to ``path`` (a torch file).

        Parameters
        ----------
        path
            File to write; read it back with :meth:`load`.
        """
        checkpoint = {
            "class": type(self).__name__,
            "config": self.config,
            "state": {name: tensor.detach().cpu() for name, tensor in self.state_dict().items()},
            "history": list(self.history),
        }
        torch.save(checkpoint, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "auto") -> Self:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path
            File written by :meth:`save`.
        device
            Where to put the model: ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.

        Returns
        -------
        The model, in evaluation mode, with its loss history.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("class") != cls.__name__:
            raise ValueError(f"{os.fspath(path)!r} holds a {checkpoint.get('class')}, not a {cls.__name__}.")
        model = cls(**checkpoint["config"])
        model.load_state_dict(checkpoint["state"])
        model.history = list(checkpoint["history"])
        return model.to(resolve_device(device)).eval()
