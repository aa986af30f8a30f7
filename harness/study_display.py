"""A study's progress display: one overall line (stage i of n, elapsed, estimate) above the running stage's own
progress line; and the estimate of the time left."""

from __future__ import annotations

import time


def estimate_left(remaining_kinds: list[str], durations: dict[str, list[float]]) -> float | None:
    """Seconds left: the mean duration of finished stages of each kind, times how many of that kind remain."""
    known = [d for items in durations.values() for d in items]
    if not known:
        return None
    total = 0.0
    for kind in remaining_kinds:
        if kind == "report":
            continue
        items = durations.get(kind) or known
        total += sum(items) / len(items)
    return total


class NullDisplay:
    """No display: what library callers and tests get."""

    def start(self, total: int) -> None: ...
    def stage(self, index: int, name: str, eta: float | None, elapsed: float) -> None: ...
    def line(self, text: str) -> None: ...
    def done(self, name: str, status: str) -> None: ...
    def finish(self, elapsed: float) -> None: ...


class RichDisplay:
    """One overall line (stage i of n, elapsed, estimate) above the running stage's own progress line."""

    def __init__(self, console):
        from rich.live import Live

        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=True)
        self.total = 0
        self.index = 0
        self.name = ""
        self.eta: float | None = None
        self.started = time.time()
        self.last = ""

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        elapsed = time.time() - self.started
        eta = "estimating…" if self.eta is None else f"~{_fmt(self.eta)} left"
        head = Text.assemble((f"Stage {self.index + 1} of {self.total}: ", "bold"), (self.name, "bold cyan"),
                             f"   elapsed {_fmt(elapsed)}   {eta}")
        return Group(head, ProgressBar(total=self.total, completed=self.index, width=60),
                     Text(self.last[-150:], style="dim"))

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.time()
        self.live.start()

    def stage(self, index: int, name: str, eta: float | None, elapsed: float) -> None:
        self.index, self.name, self.eta, self.last = index, name, eta, ""
        self.live.update(self._render())

    def line(self, text: str) -> None:
        self.last = text
        self.live.update(self._render())

    def done(self, name: str, status: str) -> None:
        style = "red" if "FAILED" in status or status == "blocked" else "green"
        self.live.console.print(f"[{style}]●[/{style}] {name}: {status}")

    def finish(self, elapsed: float) -> None:
        self.live.stop()
        self.console.print(f"Study finished in {_fmt(elapsed)}.")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
