"""Fine-tuning: `fit` trains a model on a Task and returns its History; `evaluate` scores a model.

    history = ftlab.fit(model, task, lr=1e-3, epochs=10, frozen_depth=3, patience=3)

The same call serves images (ResNet) and text (BERT): the model carries its own input handling
(`preprocess` or `tokenizer`). When the first k blocks are frozen, their output never changes, so
`fit` computes it once (the frozen-prefix cache, see `features.py`) and trains only what follows.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .features import Encoded, encode, prefix_features, prepare
from .freezing import freeze, head_modules, train_mode
from .freezing import frozen_depth as current_frozen_depth
from .history import History
from .mitigations import RehearsalSampler, anchor_weights, l2sp_penalty
from .models import head_of, using_head

__all__ = ["fit", "evaluate", "resolve_device", "StopTraining", "Source"]


class StopTraining(Exception):
    """Raise from a callback to end the run cleanly (best weights are kept, as on an interrupt)."""


@dataclass
class Source:
    """The task a model did before fine-tuning, and the head that did it.

    Forgetting is measured on `task.test` through `head` on the shared (fine-tuned) backbone;
    rehearsal draws its examples from `task.train`. For ftlab's ResNet the source is Fashion-MNIST
    and the head is the one `replace_head` returned; for sequential tasks, task A and A's head.
    The head stays fixed during fine-tuning.
    """

    task: object  # a ftlab Task
    head: nn.Module
    name: str = "source"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA, then Apple's MPS, then the CPU."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}") from None


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 elsewhere."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _logits(model: nn.Module, batch: dict, depth: int, cached: bool) -> torch.Tensor:
    from .families import family_of

    if cached:
        return family_of(model).suffix(model, depth, batch)
    batch = prepare(model, batch)
    if "pixels" in batch:
        return model(batch["pixels"])
    return model(**batch).logits


def _check_arguments(model, task, lr, epochs, patience, batch_size, optimizer, head_lr, weight_decay):
    problems = []
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        problems.append(f"lr must be a positive number (typical for fine-tuning: 1e-5 to 1e-2), got {lr!r}")
    if head_lr is not None and not (isinstance(head_lr, (int, float)) and head_lr > 0 and math.isfinite(head_lr)):
        problems.append(f"head_lr must be a positive number or None (= lr), got {head_lr!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs must be a positive integer, got {epochs!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        problems.append(f"patience must be None (no early stopping) or a positive integer, got {patience!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size must be a positive integer, got {batch_size!r}")
    if optimizer not in ("adamw", "sgd"):
        problems.append(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        problems.append(f"weight_decay must be >= 0, got {weight_decay!r}")
    modality = getattr(task, "modality", None)
    if modality == "image" and not hasattr(model, "preprocess"):
        problems.append("this task holds images but the model has no image preprocessing "
                        "(is it a text model? use ftlab.models.resnet18 for images)")
    if modality == "text" and not hasattr(model, "tokenizer"):
        problems.append("this task holds text but the model has no tokenizer "
                        "(is it an image model? use ftlab.models.bert for text)")
    outputs = head_of(model).out_features
    if outputs != task.num_classes:
        problems.append(f"the head has {outputs} outputs but the task has {task.num_classes} classes; "
                        f"call ftlab.models.replace_head(model, {task.num_classes}) first")
    if problems:
        raise ValueError("fit: " + "; ".join(problems))


def _optimizer(model: nn.Module, name: str, lr: float, head_lr: float, weight_decay: float):
    """Parameter groups over trainable parameters only: body and head (own lr), decay on matrices."""
    head_ids = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    groups = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head_ids else "body"
        decay = p.dim() >= 2  # no weight decay on biases and normalisation weights (as nanoGPT)
        groups.setdefault((part, decay), []).append(p)
    param_groups = [{"params": ps, "lr": head_lr if part == "head" else lr,
                     "weight_decay": weight_decay if decay else 0.0, "name": part}
                    for (part, decay), ps in groups.items()]
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.9)
    try:  # one fused kernel for all parameters: ~30% faster steps on this CPU than the default loop
        return torch.optim.AdamW(param_groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # devices or older torch without a fused AdamW
        return torch.optim.AdamW(param_groups, lr=lr)


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _score(model, data: Encoded, depth: int, cached: bool, device, batch_size: int,
           head: nn.Module | None = None, confusion: bool = False) -> dict:
    """Loss and accuracy of the model (or of the backbone with another head) on encoded data."""
    was_training = model.training
    model.eval()
    total_loss, correct, predictions = 0.0, 0, []
    try:
        with using_head(model, head if head is not None else head_of(model)):
            for idx in _batches(len(data), batch_size, None):
                batch = _to(data.rows(idx), device)
                labels = data.labels[idx].to(device)
                with _autocast(device):
                    logits = _logits(model, batch, depth, cached).float()
                total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
                predicted = logits.argmax(1)
                correct += (predicted == labels).sum().item()
                if confusion:
                    predictions.append(predicted.cpu())
    finally:
        model.train(was_training)
    result = {"loss": total_loss / len(data), "accuracy": correct / len(data), "n": len(data)}
    if confusion:
        from sklearn.metrics import confusion_matrix

        result["confusion"] = confusion_matrix(data.labels.numpy(), torch.cat(predictions).numpy(),
                                               labels=list(range(head_of(model).out_features)))
    return result


def evaluate(model: nn.Module, dataset, *, batch_size: int = 256, device: str = "auto",
             max_length: int | None = None, confusion: bool = False, head: nn.Module | None = None) -> dict:
    """{'loss', 'accuracy', 'n'} of `model` on `dataset` (and 'confusion', a scikit-learn matrix).

    head: score the model's backbone through this head instead of its own (e.g. the source head).
    """
    device = resolve_device(device)
    model.to(device)
    data = encode(model, dataset, max_length=max_length)
    return _score(model, data, 0, False, device, batch_size, head=head, confusion=confusion)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, task, *, lr: float, epochs: int, frozen_depth: int | None = None,
        patience: int | None = None, min_delta: float = 0.0, restore_best: bool | None = None,
        head_lr: float | None = None, optimizer: str = "adamw", weight_decay: float = 0.01,
        schedule: str = "constant", batch_size: int = 32, seed: int = 0, device: str = "auto",
        max_length: int | None = None, source: Source | None = None, l2sp: float = 0.0,
        rehearsal: float = 0.0, cache_frozen: bool = True, progress: bool = True,
        callbacks: Sequence[Callable[[History], None]] = (), stop_event: threading.Event | None = None,
        eval_batch_size: int = 256) -> History:
    """Fine-tune `model` on `task.train`, validating on `task.val` after every epoch.

    lr:           learning rate of the body (pretrained blocks); head_lr: the head's (default: lr).
    frozen_depth: freeze this many blocks from the input first (None: leave freezing as it is).
    patience:     stop after this many epochs without a val-loss improvement > min_delta, and put
                  the best epoch's weights back (restore_best, default: on when patience is set).
    optimizer:    "adamw" (default) or "sgd" (momentum 0.9); weight decay skips biases and norms.
    schedule:     "constant" or "cosine" (per step, to 0 at the last epoch).
    device:       "auto" (CUDA, then MPS, then CPU), mixed precision on CUDA.
    max_length:   tokens per text (default: the model's `max_length`).
    source:       a `Source(task, head)`: the task the model did before. Its test accuracy through
                  that head is measured at epoch 0 and after every epoch (`source_acc`, `source_loss`).
                  Forgetting = source accuracy before fine-tuning minus after, in points.
    l2sp:         strength of the L2-SP penalty pulling the body toward its starting weights (0 = off).
    rehearsal:    fraction of each batch added as source-task training examples (needs `source`).
    callbacks:    functions called with the History after epoch 0 and every epoch (live plots);
                  raise StopTraining to end the run. stop_event: set it (from another thread) to stop.

    A KeyboardInterrupt or a stop ends the run cleanly: the history so far is returned and the best
    weights are in the model. A non-finite loss ends it as "diverged" (the learning rate is the
    usual cause), with the best weights restored.
    """
    _check_arguments(model, task, lr, epochs, patience, batch_size, optimizer, head_lr, weight_decay)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if not (isinstance(l2sp, (int, float)) and l2sp >= 0):
        raise ValueError(f"l2sp must be a strength >= 0 (0 = off; try 0.01 to 1), got {l2sp!r}")
    if not (isinstance(rehearsal, (int, float)) and 0 <= rehearsal <= 1):
        raise ValueError(f"rehearsal must be a fraction of each batch in [0, 1], got {rehearsal!r}")
    if rehearsal > 0 and source is None:
        raise ValueError("rehearsal replays source-task examples: pass source=ftlab.Source(task, head)")
    if source is not None and head_of(model) is source.head:
        raise ValueError("source.head is the model's current head; replace the head first "
                         "(old_head = ftlab.models.replace_head(model, k)) and pass the old one")
    if frozen_depth is not None:  # last, so a call that fails its checks leaves the model as it was
        freeze(model, frozen_depth)
    restore_best = patience is not None if restore_best is None else restore_best
    head_lr = lr if head_lr is None else head_lr
    device = resolve_device(device)
    torch.manual_seed(seed)
    model.to(device)

    depth = frozen_depth if frozen_depth is not None else current_frozen_depth(model)
    config = {"lr": lr, "head_lr": head_lr, "epochs": epochs, "frozen_depth": depth, "patience": patience,
              "min_delta": min_delta, "restore_best": restore_best, "optimizer": optimizer,
              "weight_decay": weight_decay, "schedule": schedule, "batch_size": batch_size, "seed": seed,
              "device": str(device), "max_length": max_length, "l2sp": l2sp, "rehearsal": rehearsal,
              "task": dict(getattr(task, "config", {})), "weights": getattr(model, "weights_name", None),
              "model": type(model).__name__,
              "source": dict(getattr(source.task, "config", {}), label=source.name) if source else None}
    history = History(config=config)
    started = time.perf_counter()

    # Inputs, encoded once: tokenised texts or raw images; through the frozen prefix when cached.
    datasets = {"train": task.train, "val": task.val}
    if source is not None:
        source.head.to(device).requires_grad_(False)  # the old head is a fixed measuring instrument
        datasets["source"] = source.task.test
        if rehearsal > 0:
            datasets["replay"] = source.task.train
    data = {name: encode(model, d, max_length=max_length) for name, d in datasets.items()}
    cached = cache_frozen and depth > 0
    if cached:
        features = {name: prefix_features(model, depth, d, device=device, batch_size=eval_batch_size)
                    for name, d in data.items()}
        cached = all(f is not None for f in features.values())  # None: no prefix split, or too big
        if cached:
            data = features
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    history.summary = {"trainable_parameters": trainable,
                       "total_parameters": sum(p.numel() for p in model.parameters()),
                       "cached_prefix": cached, "train_examples": len(data["train"])}

    def measure(epoch: int, train_loss: float, train_acc: float, seconds: float, lr_now: float) -> dict:
        val = _score(model, data["val"], depth, cached, device, eval_batch_size)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": lr_now, "seconds": seconds}
        if source is not None:
            src = _score(model, data["source"], depth, cached, device, eval_batch_size, head=source.head)
            row.update(source_loss=src["loss"], source_acc=src["accuracy"])
        return row

    def notify() -> None:
        for callback in callbacks:
            callback(history)

    # Epoch 0: where the pretrained model stands before any training.
    before = _score(model, data["train"], depth, cached, device, eval_batch_size)
    history.append(measure(0, before["loss"], before["accuracy"], 0.0, lr))
    best_loss, best_state, history.best_epoch = history.rows[0]["val_loss"], _snapshot(model), 0
    waited = 0

    head_ids = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    anchors = anchor_weights(model, exclude=head_ids) if l2sp > 0 else {}
    opt = _optimizer(model, optimizer, lr, head_lr, weight_decay)
    steps_per_epoch = -(-len(data["train"]) // batch_size)
    total_steps = epochs * steps_per_epoch
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(seed)
    replay = RehearsalSampler(len(data["replay"]), rehearsal, generator) if rehearsal > 0 else None
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not progress, desc="fine-tuning", unit="batch", leave=True)
    step = 0
    try:
        notify()
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            train_mode(model)
            loss_sum, correct, seen = 0.0, 0, 0
            for idx in _batches(len(data["train"]), batch_size, generator):
                if stop_event is not None and stop_event.is_set():
                    raise StopTraining("stopped on request")
                if schedule == "cosine":
                    factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                    for group in opt.param_groups:
                        group["lr"] = factor * (head_lr if group["name"] == "head" else lr)
                labels = data["train"].labels[idx].to(device)
                with _autocast(device):
                    logits = _logits(model, _to(data["train"].rows(idx), device), depth, cached)
                    loss = target_loss = F.cross_entropy(logits.float(), labels)
                    if replay is not None:  # old-task examples, through the old head
                        old = replay.take(len(idx))
                        with using_head(model, source.head):
                            old_logits = _logits(model, _to(data["replay"].rows(old), device), depth, cached)
                        old_loss = F.cross_entropy(old_logits.float(), data["replay"].labels[old].to(device))
                        loss = (len(idx) * target_loss + len(old) * old_loss) / (len(idx) + len(old))
                    if anchors:
                        loss = loss + l2sp_penalty(model, anchors, l2sp)
                if not torch.isfinite(loss):
                    history.diverged = True
                    raise StopTraining(
                        f"the loss became {loss.item()} at epoch {epoch}: training diverged. The learning "
                        f"rate ({lr:g}) is the usual cause; try one 3-10x lower.")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                loss_sum += target_loss.item() * len(idx)
                correct += (logits.argmax(1) == labels).sum().item()
                seen += len(idx)
                bar.update()
            bar.set_description(f"epoch {epoch}/{epochs}")
            row = measure(epoch, loss_sum / seen, correct / seen, time.perf_counter() - epoch_start,
                          _current_lr(opt))
            history.append(row)
            bar.set_postfix(val_loss=f"{row['val_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")
            if not math.isfinite(row["val_loss"]):
                history.diverged = True
                raise StopTraining(f"the validation loss became {row['val_loss']} at epoch {epoch}: "
                                   f"training diverged; try a learning rate 3-10x lower than {lr:g}.")
            if row["val_loss"] < best_loss - min_delta:
                best_loss, best_state, history.best_epoch, waited = row["val_loss"], _snapshot(model), epoch, 0
            else:
                waited += 1
            notify()
            if patience is not None and waited >= patience and epoch < epochs:
                history.stopped_early = True
                history.message = (f"early stopping: no val-loss improvement for {patience} epochs; "
                                   f"best epoch {history.best_epoch}")
                break
    except StopTraining as stop:
        history.interrupted = not history.diverged
        history.message = str(stop)
    except KeyboardInterrupt:
        history.interrupted = True
        history.message = f"interrupted during epoch {history.epochs_run + 1}; the history so far is kept"
    finally:
        bar.close()
    # Diverged weights are useless, and an interrupted run keeps its best: both restore.
    if restore_best or history.diverged or history.interrupted:
        model.load_state_dict(best_state)
        history.restored_best = True
    if history.diverged:
        warnings.warn(history.message, stacklevel=2)
    elif history.interrupted and history.message.startswith("interrupted"):  # the notebook's stop button
        print(f"ftlab.fit: {history.message}; best epoch {history.best_epoch}'s weights are in the model")
    history.summary["seconds"] = time.perf_counter() - started
    if history.interrupted or history.diverged:
        _notify_end(callbacks, history)
    return history


def _current_lr(opt: torch.optim.Optimizer) -> float:
    """The body's learning rate now (the head's when the whole body is frozen)."""
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    return rates.get("body", rates.get("head"))


def _notify_end(callbacks, history: History) -> None:
    """One last call after a run ended early, so live views show where it stopped."""
    for callback in callbacks:
        try:
            callback(history)
        except (StopTraining, KeyboardInterrupt):  # the run is over already
            pass
