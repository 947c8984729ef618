"""One source for the text of the parameters that many public functions share.

A docstring names a shared parameter by a line holding only ``{name}`` where the entry would
stand; :func:`inject_docs` replaces it with the entry below, indented to match. Whole lines
only, so the braces of LaTeX in the docstrings are never touched. As squidpy's ``_docs.py``,
without the dependency.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

_Function = TypeVar("_Function", bound=Callable)

PARAMETERS: dict[str, str] = {
    "adata_niches": """\
adata
    Annotated data matrix on which :func:`spatialot.pp.niches` ran.""",
    "niche_key": """\
niche_key
    The ``key_added`` of :func:`spatialot.pp.niches`.""",
    "device": """\
device
    ``'auto'`` (CUDA when present, else CPU), ``'cpu'`` or ``'cuda'``.""",
    "progress": """\
progress
    Show a progress bar (when the settings allow it: see :class:`spatialot.settings`).""",
    "progress_training": """\
progress
    Show a progress bar with the running loss (when the settings allow it: see
    :class:`spatialot.settings`).""",
    "checkpoint": """\
checkpoint
    File to write a training checkpoint to every ``checkpoint_every`` steps and at the end;
    when it exists, training resumes from it (see :doc:`/training`).
checkpoint_every
    Steps between two checkpoints.""",
    "schedule": """\
schedule, warmup_steps
    The learning-rate schedule of training: after a linear warm-up over ``warmup_steps`` steps,
    ``'cosine'`` (default) lowers the rate along half a cosine to 0 at ``n_steps``; ``'step'``
    keeps it and multiplies it by the model's ``decay_rate`` every ``decay_every`` steps (see the
    model's ``fit``). A cosine run ends at its ``n_steps``, so its checkpoint resumes only a run
    of the same budget.""",
    "precision": """\
precision
    ``'float32'``, or ``'bfloat16'`` for bf16 autocast of the networks in training (for a GPU; the
    OT and the loss stay float32, see :doc:`/training`).""",
    "copy": """\
copy
    Return a modified copy instead of writing to ``adata``.""",
    "copy_model": """\
copy
    Work on a copy of ``adata`` and return it with the model.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ ]*)\{(?P<name>[a-z_]+)\}[ ]*$", re.MULTILINE)


def inject_docs(function: _Function) -> _Function:
    """Replace the ``{name}`` lines of ``function``'s docstring by the shared entries.

    Examples
    --------
    >>> @inject_docs
    ... def f(niche_key="niche"):
    ...     '''Do something.
    ...
    ...     Parameters
    ...     ----------
    ...     {niche_key}
    ...     '''
    >>> "The ``key_added`` of" in f.__doc__
    True
    """

    def entry(match: re.Match) -> str:
        name = match["name"]
        if name not in PARAMETERS:
            raise KeyError(f"{function.__qualname__}'s docstring names an unknown shared parameter {name!r}.")
        return textwrap.indent(PARAMETERS[name], match["indent"])

    function.__doc__ = _PLACEHOLDER.sub(entry, function.__doc__ or "")
    return function
