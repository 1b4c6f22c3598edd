"""The compiled block-sparse int8 kernels (``csrc/sparse_int8.cpp``) and their availability.

The extension is built by the project's install (``setup.py``, an optional extension: a machine
without a C++ compiler still installs). :func:`kernel_status` says whether it can run here;
callers fall back to dense int8 with one warning when it cannot.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from types import ModuleType

WANTED_ISAS = ("avx512_vnni", "avx2")


@dataclass(frozen=True)
class KernelStatus:
    """Whether the sparse kernels run on this machine, with which instruction set, or why not."""

    available: bool
    isa: str
    reason: str = ""


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    import torch  # noqa: F401  (loads libc10/libtorch that the extension links against)

    try:
        from distilprune.engine import _sparse_int8  # built by setup.py
    except ImportError as exc:
        return None, f"the sparse int8 extension is not built ({exc}); reinstall with a C++ compiler"
    return _sparse_int8, ""


def kernel_status() -> KernelStatus:
    """Availability of the sparse kernels (needs the built extension and AVX2 or AVX-512 VNNI)."""
    module, reason = _load()
    if module is None:
        return KernelStatus(False, "none", reason)
    isa = module.isa()
    if isa not in WANTED_ISAS:
        return KernelStatus(False, isa, "this CPU has neither AVX2 nor AVX-512 VNNI")
    return KernelStatus(True, isa)


def kernels() -> ModuleType:
    """The extension module; raises ``RuntimeError`` when it cannot run here."""
    status = kernel_status()
    if not status.available:
        raise RuntimeError(status.reason)
    return _load()[0]


@functools.cache
def warn_fallback(reason: str) -> None:
    """One warning per reason: the sparse engine runs dense int8 instead."""
    warnings.warn(f"sparse int8 kernels unavailable ({reason}); using dense int8", stacklevel=3)
