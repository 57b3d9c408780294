"""History: what happened in one fine-tuning run, epoch by epoch, with its full configuration.

    history = ftlab.fit(model, task, lr=1e-3, epochs=10, patience=3)
    history.to_frame()        # one row per epoch, epoch 0 = before any training
    history.best_epoch, history.outcome   # "finished", "stopped early", "interrupted" or "diverged"
    history.save("run.json"); History.load("run.json")
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["History", "OUTCOMES"]

OUTCOMES = ("finished", "stopped early", "interrupted", "diverged")  # History.outcome's values


@dataclass
class History:
    config: dict = field(default_factory=dict)  # every setting of the run (what `fit` was called with)
    rows: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, ..., seconds
    best_epoch: int | None = None  # the epoch with the lowest validation loss (restored when asked)
    stopped_early: bool = False  # early stopping ended the run before `epochs`
    interrupted: bool = False  # KeyboardInterrupt or a stop request ended it
    diverged: bool = False  # a non-finite loss ended it
    restored_best: bool = False  # the model holds the best epoch's weights, not the last's
    message: str = ""  # why the run ended, in words
    summary: dict = field(default_factory=dict)  # extra facts: trainable parameters, cache use, device

    @property
    def epochs_run(self) -> int:
        return max((r["epoch"] for r in self.rows), default=0)

    @property
    def stop_epoch(self) -> int | None:
        """The last epoch trained when the run ended early (stopping, interrupt, divergence), else None."""
        return None if self.outcome == "finished" else self.epochs_run

    @property
    def outcome(self) -> str:
        """How the run ended, in one word of OUTCOMES: "finished", "stopped early", "interrupted", "diverged".

        The one place that decides it (plots and the dashboard ask here). Divergence wins over
        the rest: fit ends a diverged run through the same path as an interrupt."""
        if self.diverged:
            return "diverged"
        if self.interrupted:
            return "interrupted"
        return "stopped early" if self.stopped_early else "finished"

    @property
    def ending(self) -> str:
        """The outcome with its epoch: 'finished (10 epochs)', 'stopped early (epoch 4)', 'diverged (epoch 2)'."""
        if self.outcome == "finished":
            return f"finished ({self.epochs_run} epoch{'s' * (self.epochs_run != 1)})"
        return f"{self.outcome} (epoch {self.epochs_run})"

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def best(self) -> dict:
        """The row of the best epoch."""
        if self.best_epoch is None:
            raise ValueError("this History has no best epoch (no epoch was measured)")
        return next(r for r in self.rows if r["epoch"] == self.best_epoch)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        # NaN/inf are not JSON: store them as null so any JSON reader can load the file
        clean = json.loads(json.dumps(self.to_dict(), default=str), parse_constant=lambda _: None)
        Path(path).write_text(json.dumps(clean, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "History":
        return cls(**json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        last = self.rows[-1] if self.rows else {}
        return (f"History({self.epochs_run} epochs, best_epoch={self.best_epoch}, "
                f"val_acc={last.get('val_acc', float('nan')):.3f}, stopped_early={self.stopped_early}"
                + (", interrupted" if self.interrupted else "") + (", diverged" if self.diverged else "") + ")")

    def summary_line(self) -> str:
        """Trainable parameters, how the frozen prefix was served, and the time, in one line."""
        s = self.summary
        parts = []
        if "trainable_parameters" in s:
            parts.append(f"{s['trainable_parameters']:,} of {s.get('total_parameters', 0):,} parameters trained")
        if s.get("cache"):
            parts.append(s["cache"])
        if "seconds" in s:
            parts.append(f"{s['seconds']:.1f} s")
        return "; ".join(parts)

    def _repr_html_(self) -> str:
        note = f"<p>{self.message}</p>" if self.message else ""
        frame = self.to_frame()
        facts = self.summary_line()
        return (f"<b>History</b>: {self.epochs_run} epochs, best epoch {self.best_epoch}"
                f"{' (weights restored)' if self.restored_best else ''}{note}"
                + (f"<p>{facts}</p>" if facts else "")
                + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}"))

