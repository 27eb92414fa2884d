"""Progress reporting shared by every long-running library function.

Libraries take an optional `progress(done, total, label)` callback and call it as work advances;
the CLI draws it as a bar (`planner.cli.common.progress_bar`). No torch here: every package uses it.
"""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int, str], None]


def phase_progress(progress: ProgressCallback | None, index: int, phases: int, label: str
                   ) -> ProgressCallback | None:
    """Scale one phase's progress(done, total) into an overall bar of `phases` phases.

    Each phase gets 1000 ticks; the label is prefixed with the phase's name.
    """
    if progress is None:
        return None

    def update(done: int, total: int, inner: str = "") -> None:
        progress(index * 1000 + (1000 * done) // max(total, 1), phases * 1000,
                 f"{label}: {inner}" if inner else label)

    return update
