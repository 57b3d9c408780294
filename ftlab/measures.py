"""What a History says about the two failure modes of fine-tuning.

forgetting: source-task accuracy before fine-tuning minus after, in points (negative means the
    source task improved). "After" is the model the run ended with: the best epoch when its weights
    were restored, else the last epoch. Measured through the source head on the shared backbone.
overfitting gap: per epoch, validation loss minus training loss, and training accuracy minus
    validation accuracy (points). On small data it opens while validation loss turns upward.
"""
from __future__ import annotations

import pandas as pd

from .history import History

__all__ = ["forgetting", "overfitting_gap", "final_row"]


def final_row(history: History) -> dict:
    """The epoch whose weights the model holds at the end of the run."""
    if history.restored_best and history.best_epoch is not None:
        return history.best()
    return history.rows[-1]


def forgetting(history: History) -> float:
    """Source accuracy before fine-tuning minus after, in percentage points."""
    if not history.rows or "source_acc" not in history.rows[0]:
        raise ValueError("this run did not track a source task: pass source=ftlab.Source(task, head) to fit")
    return 100 * (history.rows[0]["source_acc"] - final_row(history)["source_acc"])


def overfitting_gap(history: History) -> pd.DataFrame:
    """Per epoch: loss_gap = val_loss - train_loss; acc_gap = (train_acc - val_acc) in points."""
    frame = history.to_frame()
    return pd.DataFrame({"epoch": frame["epoch"],
                         "loss_gap": frame["val_loss"] - frame["train_loss"],
                         "acc_gap": 100 * (frame["train_acc"] - frame["val_acc"])})
