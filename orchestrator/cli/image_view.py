"""`qkdnet image build` and `image list` in the terminal: the builder's events drawn live, a table
of the images."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..runtime.images.builder import ImageBuilder
from ..runtime.images.engine import docker_client
from ..runtime.images.events import Component, ImageEvent, ImageResult
from ..runtime.images.layout import BASE_IMAGE
from ..runtime.images.listing import list_images
from ..runtime.images.sources import SourceTree
from ..runtime.venv_volume import venv_volumes

_LABELS: dict[Component, str] = {
    "project": "project wheel",
    "base": "base image",
    "wheelhouse": "wheelhouse",
    "node": "node image",
    "broker": "broker image",
    "venv": "node environment volume",
}


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:,.0f} MB"


def _short(image_id: str | None) -> str:
    return (image_id or "").removeprefix("sha256:")[:12]


def _describe(result: ImageResult) -> str:
    if result.component == "wheelhouse":
        what = f"{result.reference}, {result.detail}, {_megabytes(result.size_bytes)}"
    elif result.component == "project" or result.component == "venv":
        what = f"{result.reference}, {result.detail}"
    else:
        what = f"{result.reference} {_short(result.image_id)}, {_megabytes(result.size_bytes)}"
    if result.status == "built":
        return f"built in {result.seconds:.1f} s ({what})"
    return f"up to date ({what})"


class _BuildView:
    """Draws `ImageEvent`s: live bars in a terminal, one line per step otherwise."""

    def __init__(self, console: Console, verbose: bool) -> None:
        self.console = console
        self.verbose = verbose
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[label]:<12}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}", style="dim"),
            console=console,
            transient=True,
        )
        self.tasks: dict[Component, TaskID] = {}

    def __enter__(self) -> _BuildView:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def _plain(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def __call__(self, event: ImageEvent) -> None:
        label = _LABELS[event.component]
        if event.kind == "start":
            if self.live:
                self.tasks[event.component] = self.progress.add_task(
                    label, total=None, label=label, detail=event.detail
                )
            return
        task = self.tasks.get(event.component)
        if event.kind == "progress":
            detail = " ".join(event.detail.split())
            detail = detail if len(detail) <= 70 else detail[:69] + "…"
            if task is not None:
                fields: dict[str, Any] = {"detail": detail}
                if event.total is not None:
                    fields |= {"total": event.total, "completed": event.completed or 0}
                self.progress.update(task, **fields)
            elif not self.live and (event.total is not None or event.milestone or self.verbose):
                where = ""
                if event.total is not None and event.completed is not None:
                    where = f" {event.completed + 1}/{event.total}"
                self._plain(f"  {label}{where}: {' '.join(event.detail.split())}")
        elif event.kind == "log":
            if self.verbose and event.detail.strip():
                self._plain(f"  {label} | {event.detail}", style="dim")
        elif event.kind == "done" and event.result is not None:
            if task is not None:
                self.progress.remove_task(task)
            mark = "[green]✓[/green]"
            self.console.print(
                f"{mark} {label}: {_describe(event.result)}", highlight=False, soft_wrap=True
            )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a test session's budget running out, `kill`) interrupts the build as Ctrl-C
    does, so that it stops its children and removes what it made before exiting."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_image_build(
    console: Console, *, base: str | None = None, force: bool = False, verbose: bool = False
) -> int:
    """`qkdnet image build`: make what is missing or stale, show progress; the exit status."""
    source = SourceTree.find()
    client = docker_client()
    started = time.monotonic()
    with _BuildView(console, verbose) as view, _terminate_as_interrupt():
        builder = ImageBuilder(source, client, base=base or BASE_IMAGE, force=force, on_event=view)
        results = builder.build()
    built = [
        r for r in results if r.status == "built" and r.component in ("base", "node", "broker")
    ]
    elapsed = time.monotonic() - started
    if built:
        names = ", ".join(r.reference for r in built)
        console.print(
            f"qkdnet image build: built {names} in {elapsed:.1f} s", highlight=False, soft_wrap=True
        )
    else:
        console.print(
            f"qkdnet image build: {builder.tags['node']} and {builder.tags['broker']} "
            f"up to date ({elapsed:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def run_image_list(console: Console, *, as_json: bool = False) -> int:
    """`qkdnet image list`: the qkdnet images on the engine."""
    client = docker_client()
    rows = list_images(client)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    images = [row for row in rows if row["component"] in ("base", "node", "broker")]
    cache = [row for row in rows if row["component"] == "build-stage"]
    if not images:
        console.print("no qkdnet images: qkdnet image build makes them")
    else:
        table = Table("image", "ID", "size", "created (UTC)", "state")
        state = {True: "[green]current[/green]", False: "[yellow]stale[/yellow]", None: ""}
        for row in images:
            table.add_row(
                ", ".join(row["tags"]) or f"<none> ({row['component']})",
                _short(row["id"]),
                _megabytes(row["size_bytes"]),
                str(row["created"])[:16].replace("T", " "),
                state[row["current"]],
            )
        for column in table.columns:
            column.no_wrap = True
        console.print(table)
    for name, image_id in sorted(venv_volumes(client).items()):
        console.print(
            f"node environment volume: {name} (of node image {_short(image_id)})",
            highlight=False,
            soft_wrap=True,
        )
    if cache:
        size = sum(row["size_bytes"] or 0 for row in cache)
        console.print(
            f"build cache: {len(cache)} dependency stage(s) of the node image, "
            f"{_megabytes(size)} (layers shared with the node image are counted again)",
            highlight=False,
        )
    return 0
