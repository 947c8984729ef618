"""What every model shares: its configuration, loss history, device, one-line repr, and ``save``/``load``."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any, Self

import torch
from torch import nn

from ..ot import IndexedClouds, PointClouds
from ._device import resolve_device

# The configuration entries that say what a model is, shown by its repr when it has them (a
# list-valued entry such as ``labels`` is shown by its length); the rest (dropout, tolerances,
# seeds) is in ``model.config``
ARCHITECTURE_KEYS = (
    "dim",
    "max_size",
    "n_components",
    "n_anchors",
    "method",
    "width",
    "n_layers",
    "n_heads",
    "base",
    "ot_distance",
    "exact_mean",
    "noise",
    "labels",
)


class Model(nn.Module):
    """Base class of the models in :mod:`spatialot.models`.

    A subclass passes its constructor arguments (plain Python values only) to
    ``super().__init__(**config)``, builds its layers, and keeps any fitted non-trainable state
    (scales, reference measures…) in buffers, so that :meth:`save` and :meth:`load` restore a
    model exactly. ``history`` holds the training loss of every step taken so far, and
    ``n_fit_clouds`` the number of clouds (or Gaussians) of the last successful ``fit``.

    A model prints as one line: what it is, its architecture, and what it was trained on
    (``torch.nn.Module.__repr__(model)`` lists its layers).

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
    >>> model
    Scale(dim=3), not trained
    """

    n_fit_clouds: int | None = None
    _WEIGHTS_VERSION: int = 1
    """Raised by a model whenever the meaning of its saved weights changes: :meth:`load` refuses files of another."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        # every model's `fit` takes the training family (or the means) first: recorded here, once
        # for all, for the repr and the checkpoint
        if "fit" in vars(cls):
            cls.fit = _recording_fit(vars(cls)["fit"])

    def __init__(self, **config: Any):
        super().__init__()
        self.config = config
        self.history: list[float] = []

    def __repr__(self) -> str:
        architecture = ", ".join(
            f"n_{key}={len(value)}" if isinstance(value, list | tuple) else f"{key}={value!r}"
            for key in ARCHITECTURE_KEYS
            if (value := self.config.get(key)) is not None
        )
        steps = len(self.history)
        if self.n_fit_clouds is not None:
            trained = f"trained on {self.n_fit_clouds:,} clouds for {steps:,} steps"
        elif steps:
            trained = f"trained for {steps:,} steps"
        else:
            trained = "not trained"
        return f"{type(self).__name__}({architecture}), {trained}"

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
            "weights_version": self._WEIGHTS_VERSION,
            "config": self.config,
            "state": {name: tensor.detach().cpu() for name, tensor in self.state_dict().items()},
            "history": list(self.history),
            "n_fit_clouds": self.n_fit_clouds,
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
        written = checkpoint.get("weights_version", 1)
        if written != cls._WEIGHTS_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} holds a {cls.__name__} written by a version of spatialot whose weights "
                f"mean something else (weights version {written}, this version reads {cls._WEIGHTS_VERSION}): "
                "train the model again with this version."
            )
        model = cls(**checkpoint["config"])
        model.load_state_dict(checkpoint["state"])
        model.history = list(checkpoint["history"])
        model.n_fit_clouds = checkpoint.get("n_fit_clouds")  # absent from checkpoints of before
        return model.to(resolve_device(device)).eval()


def _recording_fit(fit: Callable) -> Callable:
    """``fit`` that also records the number of clouds it was given, once it has succeeded."""
    data_argument = list(inspect.signature(fit).parameters)[1]

    @functools.wraps(fit)
    def recording(self: Model, *args: Any, **kwargs: Any):
        result = fit(self, *args, **kwargs)
        data = args[0] if args else kwargs[data_argument]
        self.n_fit_clouds = len(data)
        return result

    return recording
