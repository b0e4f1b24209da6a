"""CLI rendering: training progress still reaches logs when stderr is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from tuneforge.console import TrainProgressBar
from tuneforge.train import TrainProgress


def test_training_progress_prints_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    with TrainProgressBar(console=console, log_every_s=3600) as bar:
        for step in range(1, 11):
            bar.update(TrainProgress("training", step, 10, 2.0 / step, 150.0, 10.0 * (10 - step)))
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("step ")]
    # The first step and the last step, nothing in between at this interval.
    assert lines == ["step 1/10  loss 2.0000  150 tok/s  ETA 0:01:30", "step 10/10  loss 0.2000  150 tok/s  ETA 0:00:00"]


def test_a_terminal_gets_the_live_bar_not_plain_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with TrainProgressBar(console=console, log_every_s=0) as bar:
        bar.update(TrainProgress("training", 1, 10, 1.0, 150.0, 90.0))
    assert not any(line.startswith("step ") for line in buf.getvalue().splitlines())
