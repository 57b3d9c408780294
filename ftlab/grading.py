"""ML assertions for graded lessons: one line in an otter test, a kind and specific message when wrong.

    from ftlab import grading
    grading.assert_head_size(model, 10)              # the head was replaced for a 10-class task
    grading.assert_frozen_blocks(model, 3)           # exactly stem, layer1, layer2 frozen
    before = grading.snapshot(model)                 # ... train ...
    grading.assert_unchanged_since(model, before, blocks=3)      # frozen weights bit-identical
    grading.assert_batchnorm_unchanged(model, before, blocks=3)  # and their BatchNorm statistics
    grading.assert_accuracy_between(probe_accuracy, 0.6, 0.9)
    grading.assert_restored_best(model, history, task.val)

Every assertion raises AssertionError with a message that says what is wrong, what was expected,
and a hint; otter shows that message under the failed check. An answer still holding the `...`
placeholder gets a message saying so, never a crash inside the test.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .freezing import blocks as model_blocks
from .freezing import head_modules
from .history import History

__all__ = ["Snapshot", "BlockChange", "Changes", "snapshot", "changed_since", "answered",
           "assert_answered", "assert_head_size", "assert_frozen_blocks", "assert_unchanged_since",
           "assert_batchnorm_unchanged", "assert_accuracy_between", "assert_in_band",
           "assert_best_epoch_before_last", "assert_restored_best", "assert_forgetting_below",
           "write_public_tests", "prepare_colab"]

_BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


# --- answers that are not there yet ------------------------------------------------------------

def answered(*values) -> bool:
    """True when none of `values` is still the `...` placeholder (or None): lessons use it so that
    cells after an unanswered exercise skip what needs the answer instead of crashing."""
    return all(value is not Ellipsis and value is not None for value in values)


def assert_answered(value, name: str) -> None:
    """`value` (the learner's answer called `name`) is no longer the `...` placeholder, nor None."""
    _placeholder(value, name)


def _placeholder(value, what: str) -> None:
    if value is Ellipsis:
        raise AssertionError(f"{what} is still `...`: replace the `...` with your answer and run the cell again.")
    if value is None:
        raise AssertionError(f"{what} is None. Did the cell that sets it run? A function that ends "
                             "without `return` gives None.")


def _require_model(model, what: str = "the model") -> nn.Module:
    _placeholder(model, what)
    if not isinstance(model, nn.Module):
        raise AssertionError(f"{what} should be a network (a torch nn.Module), got a {type(model).__name__}.")
    try:
        model_blocks(model)
    except TypeError as error:  # not a family ftlab knows
        raise AssertionError(f"{what}: {error}") from None
    return model


def _require_history(history, what: str = "the history") -> History:
    _placeholder(history, what)
    if not isinstance(history, History):
        raise AssertionError(f"{what} should be the History that ftlab.fit returns, got a {type(history).__name__}.")
    if not history.rows:
        raise AssertionError(f"{what} has no epochs: did the training run?")
    return history


def _require_number(value, what: str) -> float:
    _placeholder(value, what)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AssertionError(f"{what} should be a number, got {value!r} (a {type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise AssertionError(f"{what} is {value}: a finite number is expected.")
    return value


# --- which tensors belong to which block -------------------------------------------------------

def _block_names(model: nn.Module, which: int | Sequence[str] | None) -> list[str]:
    """Block names chosen by `which`: the first n blocks (int), names (list), or all (None)."""
    names = [name for name, _ in model_blocks(model)]
    if which is None:
        return names
    if isinstance(which, int) and not isinstance(which, bool):
        if not 0 <= which <= len(names):
            raise ValueError(f"blocks={which}: this model has {len(names)} blocks ({', '.join(names)})")
        return names[:which]
    unknown = [name for name in which if name not in names]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; this model's blocks are {names}")
    return list(which)


def _tensor_names_by_block(model: nn.Module) -> dict[str, list[str]]:
    """For each block, the model's names (state_dict keys) of its parameters and buffers.

    Found by identity, so it works for blocks assembled on the fly (ResNet's stem)."""
    owner = {}
    for block_name, block in model_blocks(model):
        for tensor in [*block.parameters(), *block.buffers()]:
            owner[id(tensor)] = block_name
    names: dict[str, list[str]] = {name: [] for name, _ in model_blocks(model)}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in owner:
            names[owner[id(tensor)]].append(name)
    return names


@dataclass(frozen=True)
class Snapshot:
    """Copies of every parameter and buffer of a model at one moment, on the CPU."""

    tensors: dict[str, torch.Tensor] = field(repr=False)
    blocks: dict[str, list[str]] = field(repr=False)  # block name -> names of its tensors

    def __repr__(self) -> str:
        return f"Snapshot({len(self.tensors)} tensors in {len(self.blocks)} blocks: {', '.join(self.blocks)})"


def snapshot(model: nn.Module) -> Snapshot:
    """Copy the model's weights and BatchNorm statistics now, to compare after training."""
    model = _require_model(model)
    tensors = {name: t.detach().to("cpu", copy=True) for name, t in [*model.named_parameters(),
                                                                   *model.named_buffers()]}
    return Snapshot(tensors, _tensor_names_by_block(model))


@dataclass(frozen=True)
class BlockChange:
    """How much one block moved: tensors that differ from the snapshot, and the largest change."""

    block: str
    tensors: int  # tensors compared (parameters, or BatchNorm statistics)
    changed: int  # of those, how many are not bit-identical
    largest: float  # the largest absolute change of any element
    where: str  # the tensor with the largest change ("" when nothing changed)

    @property
    def unchanged(self) -> bool:
        return self.changed == 0


@dataclass(frozen=True)
class Changes:
    """What training changed, block by block (shows as a table in a notebook)."""

    kind: str  # "parameters" or "BatchNorm statistics"
    rows: tuple[BlockChange, ...]

    def __getitem__(self, block: str) -> BlockChange:
        for row in self.rows:
            if row.block == block:
                return row
        raise KeyError(f"no block {block!r} here; the blocks are {[row.block for row in self.rows]}")

    def __repr__(self) -> str:
        lines = [f"{self.kind} changed since the snapshot:"]
        lines += [f"  {r.block:<10} {'unchanged' if r.unchanged else f'{r.changed}/{r.tensors} tensors changed, largest change {r.largest:.3g}'}"
                  for r in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td>{r.block}</td><td>{r.tensors}</td><td>{r.changed}</td><td>{r.largest:.3g}</td>"
            f"<td>{'&#10003; unchanged' if r.unchanged else 'changed'}</td></tr>" for r in self.rows)
        return (f"<b>{self.kind} changed since the snapshot</b><table><tr><th>block</th><th>tensors</th>"
                f"<th>changed</th><th>largest change</th><th></th></tr>{cells}</table>")


def _compare(model: nn.Module, snap: Snapshot, names: list[str], stats: bool) -> Changes:
    current = dict([*model.named_parameters(), *model.named_buffers()])
    by_block = _tensor_names_by_block(model)
    rows = []
    for block in names:
        tensor_names = [n for n in by_block[block] if (n.rsplit(".", 1)[-1] in _BATCHNORM_STATS) == stats]
        changed, largest, where = 0, 0.0, ""
        for name in tensor_names:
            if name not in snap.tensors:
                raise AssertionError(f"{name} (in {block}) is not in the snapshot: take the snapshot of "
                                     "the same model, after replacing its head, just before training.")
            before, now = snap.tensors[name], current[name].detach().cpu()
            if before.shape != now.shape or not torch.equal(before, now):
                changed += 1
                delta = (now.double() - before.double()).abs().max().item() if before.shape == now.shape else math.inf
                if delta >= largest:
                    largest, where = delta, name
        rows.append(BlockChange(block, len(tensor_names), changed, largest, where))
    return Changes("BatchNorm statistics" if stats else "parameters", tuple(rows))


def changed_since(model: nn.Module, snap: Snapshot, *, blocks: int | Sequence[str] | None = None,
                  batchnorm: bool = False) -> Changes:
    """Per block, which parameters (or, with batchnorm=True, BatchNorm statistics) differ from `snap`."""
    model = _require_model(model)
    return _compare(model, snap, _block_names(model, blocks), stats=batchnorm)


# --- the assertions ----------------------------------------------------------------------------

def assert_head_size(model: nn.Module, num_classes: int) -> None:
    """The model's head is a linear layer with `num_classes` outputs."""
    model = _require_model(model)
    from .models import head_of

    head = head_of(model)
    if not isinstance(head, nn.Linear):
        raise AssertionError(f"the head should be an nn.Linear layer, but it is a {type(head).__name__}. "
                             f"Hint: ftlab.models.replace_head(model, {num_classes}) puts a fresh linear head on.")
    if head.out_features != num_classes:
        raise AssertionError(
            f"the head has {head.out_features} outputs, but the task has {num_classes} classes: one output "
            f"per class is needed. Hint: ftlab.models.replace_head(model, {num_classes}) swaps the head "
            "for a fresh one (and returns the old one, keep it).")


def assert_frozen_blocks(model: nn.Module, depth: int) -> None:
    """Exactly the first `depth` blocks are frozen; the blocks after them and the head train."""
    model = _require_model(model)
    named = model_blocks(model)
    order = ", ".join(name for name, _ in named)
    if depth >= len(named):
        expected = f"with frozen depth {depth}, all {len(named)} blocks ({order}) are frozen and only the head trains"
    else:
        expected = (f"with frozen depth {depth}, the first {depth} of the {len(named)} blocks ({order}) "
                    "are frozen and everything after them trains")
    hint = f"Hint: ftlab.freeze(model, {depth}) sets exactly this (ftlab.trainable_summary(model) shows it)."
    for i, (name, block) in enumerate(named):
        params = list(block.parameters())
        trainable = sum(p.requires_grad for p in params)
        if i < depth and trainable:
            state = "trainable" if trainable == len(params) else f"partly trainable ({trainable} of {len(params)} tensors)"
            raise AssertionError(f"block {name!r} (block {i + 1}) is {state}, but it should be frozen: "
                                 f"{expected}. {hint}")
        if i >= depth and trainable < len(params):
            state = "frozen" if trainable == 0 else f"partly frozen ({len(params) - trainable} of {len(params)} tensors)"
            raise AssertionError(f"block {name!r} (block {i + 1}) is {state}, but it should train: "
                                 f"{expected}. {hint}")
    for path, module in head_modules(model):
        if any(not p.requires_grad for p in module.parameters()):
            raise AssertionError(f"the head ({path}) is frozen, but it must always train: it is the only "
                                 f"part that knows the new task's classes. {hint}")


def assert_unchanged_since(model: nn.Module, snap: Snapshot, *, blocks: int | Sequence[str] | None = None) -> None:
    """The parameters of `blocks` (the first n, names, or all) are bit-identical to the snapshot."""
    _placeholder(snap, "the snapshot")
    for row in changed_since(model, snap, blocks=blocks).rows:
        if not row.unchanged:
            raise AssertionError(
                f"block {row.block!r} changed during training ({row.changed} of its {row.tensors} parameter "
                f"tensors differ; largest change {row.largest:.3g} in {row.where}), but a frozen block must "
                "stay exactly as it was. Hint: freeze before training (ftlab.freeze(model, depth) or "
                "fit(..., frozen_depth=depth)) and check ftlab.trainable_summary(model).")


def assert_batchnorm_unchanged(model: nn.Module, snap: Snapshot, *, blocks: int | Sequence[str] | None = None) -> None:
    """The BatchNorm running statistics of `blocks` are bit-identical to the snapshot."""
    _placeholder(snap, "the snapshot")
    for row in changed_since(model, snap, blocks=blocks, batchnorm=True).rows:
        if not row.unchanged:
            raise AssertionError(
                f"the BatchNorm running statistics of block {row.block!r} moved during training "
                f"({row.where} changed by up to {row.largest:.3g}). A frozen block must also keep its "
                "statistics: it has to run in eval mode while the rest trains. Hint: setting "
                "requires_grad=False alone is not enough; ftlab.freeze and fit(frozen_depth=...) do both.")


def assert_accuracy_between(value, low: float, high: float, *, name: str = "the accuracy") -> None:
    """`value` is an accuracy as a fraction in [low, high] (not a percentage)."""
    value = _require_number(value, name)
    if 1 < value <= 100 and high <= 1:
        raise AssertionError(f"{name} is {value:g}, which looks like a percentage: report it as a fraction "
                             f"between 0 and 1 (e.g. {value / 100:.3f}), as ftlab.evaluate and History do.")
    if not 0 <= value <= 1:
        raise AssertionError(f"{name} is {value:g}, but an accuracy is a fraction between 0 and 1.")
    if not low <= value <= high:
        side = "below" if value < low else "above"
        raise AssertionError(
            f"{name} is {value:.3f}, {side} the expected range {low:.2f} to {high:.2f}. Hint: check that "
            "you read the right number (test split, the right run) and that the cells above ran in order.")


def assert_in_band(value, expected: float, tolerance: float, *, name: str = "the value") -> None:
    """`value` is within `tolerance` of `expected`."""
    value = _require_number(value, name)
    if abs(value - expected) > tolerance:
        raise AssertionError(
            f"{name} is {value:.4g}, outside the expected band {expected:.4g} ± {tolerance:.2g}. Hint: "
            "recompute it from the experiment's result above rather than typing it by hand, and run the "
            "notebook top to bottom (Kernel > Restart and run all) so every number comes from the same run.")


def assert_best_epoch_before_last(history: History) -> None:
    """The validation loss bottomed out before the last epoch: the run shows overfitting."""
    history = _require_history(history)
    if history.best_epoch is None:
        raise AssertionError("the history has no best epoch: it was not produced by ftlab.fit.")
    if history.best_epoch >= history.epochs_run:
        raise AssertionError(
            f"the best epoch is the last one (epoch {history.epochs_run}): validation loss was still "
            "falling when training ended, so this run shows no overfitting yet. Hint: train for more "
            "epochs, or on fewer examples, until the validation loss turns upward.")


def assert_restored_best(model: nn.Module, history: History, dataset, *, tolerance: float = 1e-3) -> None:
    """The model holds the best epoch's weights: re-evaluated on `dataset` (the validation split
    fit used), its loss equals the best epoch's validation loss."""
    model = _require_model(model)
    history = _require_history(history)
    _placeholder(dataset, "the dataset")
    if history.best_epoch is None:
        raise AssertionError("the history has no best epoch: it was not produced by ftlab.fit.")
    from .training import evaluate

    best = history.best()["val_loss"]
    last = history.rows[-1]
    loss = evaluate(model, dataset, device=history.config.get("device", "auto"))["loss"]
    if abs(loss - best) <= tolerance * max(1.0, abs(best)):
        return
    if history.best_epoch != last["epoch"] and abs(loss - last["val_loss"]) <= tolerance * max(1.0, abs(last["val_loss"])):
        raise AssertionError(
            f"the model holds the last epoch's weights (epoch {last['epoch']}, validation loss {last['val_loss']:.4f}), "
            f"not the best epoch's (epoch {history.best_epoch}, {best:.4f}). Hint: fit(..., patience=...) "
            "restores the best weights at the end (restore_best=True).")
    raise AssertionError(
        f"re-evaluated, the model's loss is {loss:.4f}, but the best epoch ({history.best_epoch}) had a "
        f"validation loss of {best:.4f}: the model does not hold the best epoch's weights. Was it changed "
        "after training, or is this the wrong dataset (use the task's validation split)?")


def assert_forgetting_below(history: History, bound: float) -> None:
    """Forgetting (source accuracy before minus after, in points) is below `bound` points."""
    history = _require_history(history)
    from .measures import final_row, forgetting

    try:
        points = forgetting(history)
    except ValueError as error:
        raise AssertionError(str(error)) from None
    if points >= bound:
        before, after = history.rows[0]["source_acc"], final_row(history)["source_acc"]
        raise AssertionError(
            f"forgetting is {points:.1f} points (source accuracy {before:.1%} before fine-tuning, "
            f"{after:.1%} after), not below {bound:g} points. Hint: freeze more blocks, lower the learning "
            "rate, stop earlier, or add l2sp=... or rehearsal=... to fit.")


# --- public tests as files (otter on Colab reads tests from files, not from the notebook) -------

def write_public_tests(notebook: str | Path, folder: str | Path = "tests") -> list[Path]:
    """Write the public otter tests stored in a student notebook's metadata as test files.

    Locally otter reads them from the notebook; on Colab the notebook is not a file, so otter
    needs `tests/<question>.py` next to the working directory. Returns the files written.
    """
    meta = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {}).get("otter", {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for question, test in meta.get("tests", {}).items():
        path = folder / f"{question}.py"
        if isinstance(test, str):  # exception-based format: the file itself
            path.write_text(test, encoding="utf-8")
        else:  # OK format: a dict
            path.write_text(f"OK_FORMAT = True\n\ntest = {test!r}\n", encoding="utf-8")
        written.append(path)
    return written


def prepare_colab(lesson: str, *, repo: str | Path, workdir: str | Path | None = None, fetch: bool = True,
                  chdir: bool = False) -> Path:
    """Make a lesson's checks work on Colab, where the notebook is not a file otter can read.

    Fetches the data and weights (`ftlab setup`; skipped with fetch=False), then copies the lesson's
    student notebook from the cloned `repo` into `workdir`, with its public tests as files in
    `workdir`/tests. Returns the folder.

    workdir: default the current working directory (/content on Colab), which is where the
             lesson's next cell, `otter.Notebook("<lesson>.ipynb")`, looks for the notebook and ./tests.
    chdir:   also make `workdir` the working directory (for a workdir elsewhere that otter should
             read from). Off by default: the working directory changes only when asked.
    """
    if fetch:
        from .install import ensure_all

        ensure_all()
    folder = Path(workdir) if workdir is not None else Path.cwd()
    notebook = Path(repo) / "notebooks" / f"{lesson}.ipynb"
    if not notebook.exists():
        raise FileNotFoundError(f"{notebook} does not exist: is {repo} a clone of the course repository, "
                                f"and is {lesson!r} spelled as in its notebooks/ folder?")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / notebook.name
    if not (target.exists() and target.samefile(notebook)):  # run inside the clone: the file is already there
        shutil.copy(notebook, target)
    write_public_tests(target, folder / "tests")
    if chdir:
        os.chdir(folder)
    return folder
