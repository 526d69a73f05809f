"""What a person watching a run sees: one stderr console and one style of progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["console", "progress", "track"]

T = TypeVar("T")


def console(stderr: bool = True):
    """A rich console; stderr by default, so tables and CSV on stdout stay clean."""
    from rich.console import Console

    return Console(stderr=stderr)


def progress(con=None, *, disable: bool = False, remaining: bool = False):
    """segqc's progress bar: description, bar, done/total, elapsed (or remaining) time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeRemainingColumn() if remaining else TimeElapsedColumn()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), clock,
                    console=con or console(), disable=disable)


def track(items: Iterable[T], description: str, total: int | None = None, disable: bool = False) -> Iterator[T]:
    """Iterate ``items`` under a progress bar."""
    items = list(items) if total is None else items
    with progress(disable=disable) as bar:
        task = bar.add_task(description, total=total if total is not None else len(items))
        for it in items:
            yield it
            bar.advance(task)
