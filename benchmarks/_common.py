"""Shared helpers of the benchmark scripts: machine description, devices, timing, memory, output.

Importing this module also removes the ``benchmarks/`` folder from the front of ``sys.path``:
``python benchmarks/ot.py`` puts that folder first, where ``ot.py`` would shadow POT (``import
ot``) inside spatialot. Scripts therefore import it as shown in ``niches.py`` and ``ot.py``.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def fix_sys_path() -> None:
    """Move this folder to the end of ``sys.path`` so that ``import ot`` finds POT, not ``ot.py``."""

    def is_here(entry: str) -> bool:
        try:
            return Path(entry or ".").resolve() == HERE
        except OSError:  # pragma: no cover
            return False

    sys.path[:] = [p for p in sys.path if not is_here(p)] + [str(HERE)]


fix_sys_path()


# --------------------------------------------------------------------------- devices and machine


def resolve_device(name: str) -> str:
    """``'auto'`` becomes ``'cuda'`` when a GPU is visible, else ``'cpu'``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch sees no CUDA device.")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu, cuda or auto, got {name!r}.")
    return name


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy as np
    import scipy
    import torch

    import spatialot

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_total_gb": _memory_total_gb(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "spatialot": getattr(spatialot, "__version__", "unknown"),
        "device": device,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_total_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


# --------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], *, device: str = "cpu") -> tuple[float, Any]:
    """Seconds taken by one call of ``fn`` (GPU work included), and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median_time(
    fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, device: str = "cpu"
) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed calls, and all the times."""
    for _ in range(warmup):
        fn()
    times = [time_call(fn, device=device)[0] for _ in range(repeats)]
    return statistics.median(times), times


# --------------------------------------------------------------------------- memory (Linux)


def stamp_steps(model) -> list[float]:
    """Record ``time.perf_counter()`` as each training step of ``model`` starts (its ``_loss`` is wrapped).

    Returns the list the stamps are appended to. The time between stamps is a step, the
    calibration before training excluded; under ``torchrun`` a step's gradient averaging falls
    between two stamps.
    """
    stamps: list[float] = []
    loss = model._loss

    def stamped(*batch):
        stamps.append(time.perf_counter())
        return loss(*batch)

    model._loss = stamped
    return stamps


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the resident-memory high-water mark (``VmHWM``) of this process; ``False`` if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Resident-memory high-water mark of this process (since the last reset, if any)."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is in kB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024
    return kb * 1024


def measure_peak_memory(fn: Callable[[], Any], *, trace: bool = True) -> dict[str, Any]:
    """Peak memory added by one call of ``fn``, measured two ways.

    - ``rss_peak_extra_bytes``: resident-set high-water mark during the call minus the resident
      set just before it. The mark is reset first through ``/proc/self/clear_refs`` (Linux);
      where that is impossible, it is the growth of ``ru_maxrss`` (which misses any peak below
      an earlier one), and ``rss_method`` says so.
    - ``tracemalloc_peak_bytes``: peak of Python-heap and numpy allocations traced by
      :mod:`tracemalloc` during a second call (C++ libraries that bypass numpy's allocator, such
      as torch or scipy's k-d tree nodes, are not seen).
    """
    import tracemalloc

    gc.collect()
    if reset_peak_rss():
        method = "VmHWM after /proc/self/clear_refs reset, minus VmRSS before"
        before = rss_bytes()
    else:
        method = "ru_maxrss growth (peaks below the process's earlier peak are missed)"
        before = peak_rss_bytes()
    first_call_s, _ = time_call(fn)
    rss_extra = peak_rss_bytes() - before
    result: dict[str, Any] = {
        "rss_peak_extra_bytes": int(rss_extra),
        "rss_method": method,
        "first_call_s": first_call_s,
    }
    if not trace:
        return result
    gc.collect()
    tracemalloc.start()
    fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {**result, "tracemalloc_peak_bytes": int(traced_peak)}


# --------------------------------------------------------------------------- output


def default_out(name: str, device: str, quick: bool) -> Path:
    return RESULTS / f"{name}{'-quick' if quick else ''}-{device}.json"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the folder; atomically (tmp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_number(value: Any, digits: int = 3) -> str:
    """Compact text of a number: ``-`` for None, ints as is, floats with ``digits`` significant."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
        return f"{value:.{digits - 1}e}"
    return str(value)


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str] | tuple[str, str, str]],
    title: str | None = None,
) -> str:
    """Print ``rows`` as an aligned plain-text table and return its text.

    ``columns`` are ``(key, header)`` or ``(key, header, align)`` with ``align`` ``'<'`` or ``'>'``
    (default: right-aligned). Values are formatted with :func:`format_number` unless they
    already are strings.
    """
    keys = [c[0] for c in columns]
    headers = [c[1] for c in columns]
    aligns = [c[2] if len(c) > 2 else ">" for c in columns]
    cells = [[v if isinstance(v := row.get(key), str) else format_number(v) for key in keys] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if a == "<" else v.rjust(w) for v, w, a in zip(values, widths, aligns, strict=True))

    text = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    if title:
        text.insert(0, title)
    out = "\n".join(t.rstrip() for t in text)
    print(out, flush=True)
    return out
