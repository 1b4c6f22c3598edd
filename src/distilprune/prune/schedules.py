"""Sparsity schedules: the cubic gradual schedule of Zhu & Gupta (2017, "To prune, or not").

``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3`` for ``t0 <= t <= t0 + n*dt``, where
``t0`` is the start step, ``t0 + n*dt`` the end step and ``dt`` the update frequency. Sparsity
rises quickly at first (many redundant weights) and flattens out towards the end.
"""

from __future__ import annotations


def cubic_sparsity(
    step: int,
    *,
    initial: float,
    final: float,
    start_step: int,
    end_step: int,
    frequency: int = 1,
) -> float:
    """Target sparsity at ``step`` of the cubic schedule.

    The step is quantised down to the last update step (``start_step + k * frequency``), so the
    value only changes when masks are actually updated. Before ``start_step`` the result is
    ``initial``; from ``end_step`` on (also when ``end_step <= start_step``) it is ``final``.
    """
    if step >= end_step:
        return float(final)
    if step <= start_step:
        return float(initial)
    frequency = max(1, int(frequency))
    quantised = start_step + ((step - start_step) // frequency) * frequency
    progress = (quantised - start_step) / (end_step - start_step)
    return float(final + (initial - final) * (1.0 - progress) ** 3)


def is_update_step(step: int, start_step: int, end_step: int, frequency: int) -> bool:
    """Whether masks are recomputed at ``step``: every ``frequency`` steps from ``start_step``
    up to ``end_step``, which is always an update step (so the final sparsity is reached)."""
    if step < start_step or step > end_step:
        return False
    return step == end_step or (step - start_step) % max(1, int(frequency)) == 0
