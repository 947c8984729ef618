"""``sot.settings``: the package-wide switches, and the one place that applies them.

Progress bars and CPU threads are decided here and nowhere else: every loop of the package
draws its bar with :func:`progress_bar` and runs its heavy torch work under :func:`cpu_threads`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from scanpy import settings as scanpy_settings
from tqdm.auto import tqdm


class Settings:
    """Package-wide settings of spatialot, as ``sot.settings``.

    :attr:`progress` decides the progress bars, :attr:`n_threads` the CPU threads of torch.

    Examples
    --------
    >>> import spatialot as sot
    >>> sot.settings.n_threads = 1  # one CPU thread for every training and encoding
    >>> sot.settings.progress = False  # no progress bars anywhere
    >>> sot.settings.progress = None  # back to following scanpy's verbosity
    """

    def __init__(self) -> None:
        self._progress: bool | None = None
        self._n_threads: int | None = None

    @property
    def progress(self) -> bool | None:
        """Progress bars: ``None`` (default) follows scanpy, ``False`` hides them all, ``True`` shows them.

        With ``None``, bars are shown unless ``sc.settings.verbosity`` is ``0`` (``'error'``).
        A call's ``progress=False`` always hides its own bars.
        """
        return self._progress

    @progress.setter
    def progress(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"`sot.settings.progress` must be True, False or None, got {value!r}.")
        self._progress = value

    @property
    def n_threads(self) -> int | None:
        """CPU threads torch uses while spatialot trains, encodes or solves OT.

        ``None`` (default) leaves torch's setting as it is (by default one per core); a positive
        number sets it for the duration of each call and puts the previous value back
        afterwards. On a machine shared with other work, ``1`` is often many times faster than
        torch's default.
        """
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`sot.settings.n_threads` must be a positive integer or None, got {value!r}.")
        self._n_threads = value

    def __repr__(self) -> str:
        return f"spatialot settings: progress={self.progress!r}, n_threads={self.n_threads!r}"


settings = Settings()


def show_progress(requested: bool = True) -> bool:
    """Whether a bar is drawn: the call asked for it (``requested``) and the settings allow it."""
    if not requested:
        return False
    if settings.progress is not None:
        return settings.progress
    return int(scanpy_settings.verbosity) > 0


def progress_bar(
    iterable: Iterable | None = None,
    *,
    description: str,
    requested: bool = True,
    total: int | None = None,
    unit: str = "it",
) -> tqdm:
    """The package's progress bar over ``iterable`` (a tqdm, disabled when :func:`show_progress` says so).

    With ``iterable=None`` it is a bar of ``total`` ``unit`` that the caller advances with ``update``.
    """
    return tqdm(iterable, desc=description, total=total, unit=unit, disable=not show_progress(requested))


@contextmanager
def cpu_threads() -> Iterator[None]:
    """Run a block with ``settings.n_threads`` torch CPU threads, then put back the previous number."""
    if settings.n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(settings.n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
