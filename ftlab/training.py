"""Fine-tuning: `fit` trains a model on a Task and returns its History; `evaluate` scores a model.

    history = ftlab.fit(model, task, lr=1e-3, epochs=10, frozen_depth=3, patience=3)
    history = ftlab.fine_tune(model, task, lr=1e-3, epochs=5)   # fastai's recipe: head first, then all

The same call serves images (ResNet) and text (BERT): the model carries its own input handling
(`preprocess` or `tokenizer`). When the first k blocks are frozen, their output never changes, so
`fit` computes it once (the frozen-prefix cache, see `features.py`) and trains only what follows.
A run is three parts, each a function below: prepare the data (`_prepare`), train one epoch
(`_train_epoch`), and decide after each epoch whether to go on (`EarlyStopping`).
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .checks import require_dataset, require_model, require_task
from .features import Encoded, encode, prefix_features, prepare
from .freezing import blocks, freeze, head_modules, train_mode
from .freezing import frozen_depth as current_frozen_depth
from .history import History
from .mitigations import RehearsalSampler, l2sp_penalty
from .models import head_of, using_head
from .optim import make_optimizer, make_scheduler
from .settings import FitSettings

__all__ = ["fit", "fine_tune", "evaluate", "resolve_device", "StopTraining", "Source", "EarlyStopping",
           "unfreeze_schedule"]


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
    except (RuntimeError, TypeError):
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


def _check_task(model: nn.Module, task) -> None:
    """What `fit` needs of a task and model pair, in words."""
    require_model(model, "fit")
    require_task(task, "fit")
    problems = []
    modality = getattr(task, "modality", None)
    if modality == "image" and not hasattr(model, "preprocess"):
        problems.append("this task holds images but the model has no image preprocessing "
                        "(is it a text model? use ftlab.models.resnet18 for images)")
    if modality == "text" and not hasattr(model, "tokenizer"):
        problems.append("this task holds text but the model has no tokenizer "
                        "(is it an image model? use ftlab.models.bert for text)")
    mismatch = _head_mismatch(model, task)
    if mismatch:
        problems.append(mismatch)
    if problems:
        raise ValueError("fit: " + "; ".join(problems))


def _head_mismatch(model: nn.Module, task) -> str:
    """What is wrong when the head's size is not the task's class count ("" when they agree)."""
    outputs = head_of(model).out_features
    if outputs == task.num_classes:
        return ""
    return (f"the head has {outputs} outputs but the task has {task.num_classes} classes; "
            f"call ftlab.models.replace_head(model, {task.num_classes}) first")


def _check_against_model(model: nn.Module, task, settings: FitSettings, source: Source | None) -> None:
    limit = len(blocks(model))
    names = ", ".join(f"{i}={n}" for i, (n, _) in enumerate(blocks(model), 1))
    for name in ("frozen_depth", "unfreeze_to"):
        value = getattr(settings, name)
        if value is not None and value > limit:
            raise ValueError(f"fit: {name} must be an integer in 0..{limit} for this model (0 = nothing frozen, "
                             f"{limit} = whole backbone; blocks: {names}), got {value!r}")
    if settings.unfreeze_every is not None and settings.unfreeze_to > _start_depth(model, settings):
        raise ValueError(f"fit: unfreeze_to ({settings.unfreeze_to}) must not exceed the starting frozen depth "
                         f"({_start_depth(model, settings)}): gradual unfreezing only unfreezes")
    if settings.augment is not None and getattr(task, "modality", "image") != "image":
        raise ValueError("fit: augment applies to images only; this task holds text")
    if settings.rehearsal > 0 and source is None:
        raise ValueError("fit: rehearsal replays source-task examples: pass source=ftlab.Source(task, head)")
    if source is not None and not isinstance(source, Source):
        raise TypeError(f"fit: source must be ftlab.Source(task, head) or None, got {type(source).__name__}")
    if source is not None and head_of(model) is source.head:
        raise ValueError("fit: source.head is the model's current head; replace the head first "
                         "(old_head = ftlab.models.replace_head(model, k)) and pass the old one")


def _start_depth(model: nn.Module, settings: FitSettings) -> int:
    return settings.frozen_depth if settings.frozen_depth is not None else current_frozen_depth(model)


def unfreeze_schedule(epoch: int, *, start: int, every: int | None, to: int = 0) -> int:
    """Gradual unfreezing (ULMFiT): the frozen depth during `epoch` (1-based).

    One more block from the top trains every `every` epochs: start, start - 1, ... down to `to`.
    """
    if every is None:
        return start
    return max(to, start - (epoch - 1) // every)


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

        num_classes = (head if head is not None else head_of(model)).out_features
        result["confusion"] = confusion_matrix(data.labels.numpy(), torch.cat(predictions).numpy(),
                                               labels=list(range(num_classes)))
    return result


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def evaluate(model: nn.Module, dataset, *, batch_size: int = 256, device: str = "auto",
             max_length: int | None = None, confusion: bool = False, head: nn.Module | None = None) -> dict:
    """{'loss', 'accuracy', 'n'} of `model` on `dataset` (and 'confusion', a scikit-learn matrix).

    head: score the model's backbone through this head instead of its own (e.g. the source head).
    The model is scored on `device` and put back where it was (on its own device, in its own mode).
    """
    require_model(model, "evaluate")
    require_dataset(dataset, "evaluate")
    target = resolve_device(device)
    home = _model_device(model)
    head_home = _model_device(head) if head is not None else None
    data = encode(model, dataset, max_length=max_length)
    try:
        model.to(target)
        if head is not None:
            head.to(target)
        return _score(model, data, 0, False, target, batch_size, head=head, confusion=confusion)
    finally:
        model.to(home)
        if head is not None:
            head.to(head_home)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --- the three parts of a run ------------------------------------------------------------------


@dataclass
class _Data:
    """A run's inputs, encoded once (`raw`), and the view training reads (`view`): the raw inputs,
    or their frozen-prefix features when the cache serves the current depth."""

    raw: dict[str, Encoded]
    view: dict[str, Encoded] = field(default_factory=dict)
    depth: int = 0
    cached: bool = False
    note: str = ""  # why the cache is not used, when it is not


def _prepare(model: nn.Module, task, source: Source | None, settings: FitSettings, device: torch.device,
             cache_frozen: bool, eval_batch_size: int) -> _Data:
    """Encode every split once (tokenise texts, stack images)."""
    datasets = {"train": task.train, "val": task.val}
    if source is not None:
        datasets["source"] = source.task.test
        if settings.rehearsal > 0:
            datasets["replay"] = source.task.train
    data = _Data({name: encode(model, d, max_length=settings.max_length) for name, d in datasets.items()})
    if not cache_frozen:
        data.note = "cache off (cache_frozen=False)"
    elif settings.augment is not None:
        # augmented images differ every step, so no stored prefix output can stand for them
        data.note = "no frozen-prefix cache: augmentation changes the inputs every step"
    return data


def _use_depth(data: _Data, model: nn.Module, depth: int, device: torch.device, usable: bool,
               eval_batch_size: int) -> None:
    """Point the view at frozen-prefix features for `depth` (computed once per depth), or at the raw inputs."""
    data.depth = depth
    if usable and depth > 0:
        features = {name: prefix_features(model, depth, d, device=device, batch_size=eval_batch_size)
                    for name, d in data.raw.items()}
        if all(f is not None for f in features.values()):  # None: no prefix split, or too big
            data.view, data.cached = features, True
            return
    data.view, data.cached = data.raw, False


class EarlyStopping:
    """The end-of-epoch policy: keep the best epoch's weights (lowest val loss), stop after
    `patience` epochs without an improvement of more than `min_delta`."""

    def __init__(self, model: nn.Module, first_loss: float, *, patience: int | None, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch, self.best_state, self.waited = first_loss, 0, _snapshot(model), 0

    def update(self, model: nn.Module, epoch: int, val_loss: float) -> bool:
        """Record this epoch; True when the run should stop now."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.best_state, self.waited = val_loss, epoch, _snapshot(model), 0
        else:
            self.waited += 1
        return self.patience is not None and self.waited >= self.patience


@dataclass
class _Trainer:
    """What one training epoch needs, built once per run."""

    model: nn.Module
    settings: FitSettings
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    generator: torch.Generator
    anchors: dict
    replay: RehearsalSampler | None
    source: Source | None
    augment: Callable | None
    stop_event: threading.Event | None
    bar: object


def _train_epoch(t: _Trainer, data: _Data, epoch: int, history: History) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy) on the batches as trained."""
    model, settings, device = t.model, t.settings, t.device
    if t.augment is not None:
        from .augment import augment_batch
    train_mode(model)
    train = data.view["train"]
    loss_sum, correct = 0.0, 0
    for idx in _batches(len(train), settings.batch_size, t.generator):
        if t.stop_event is not None and t.stop_event.is_set():
            raise StopTraining("stopped on request")
        labels = train.labels[idx].to(device)
        batch = train.rows(idx)
        if t.augment is not None:  # raw images only (the cache is off), training examples only
            batch = {"pixels": augment_batch(t.augment, batch["pixels"], t.generator)}
        with _autocast(device):
            logits = _logits(model, _to(batch, device), data.depth, data.cached)
            loss = target_loss = F.cross_entropy(logits.float(), labels)
            if t.replay is not None:  # old-task examples, through the old head
                replay = data.view["replay"]
                old = t.replay.take(len(idx))
                with using_head(model, t.source.head):
                    old_logits = _logits(model, _to(replay.rows(old), device), data.depth, data.cached)
                old_loss = F.cross_entropy(old_logits.float(), replay.labels[old].to(device))
                loss = (len(idx) * target_loss + len(old) * old_loss) / (len(idx) + len(old))
            if t.anchors:
                loss = loss + l2sp_penalty(model, t.anchors, settings.l2sp)
        if not torch.isfinite(loss):
            history.diverged = True
            raise StopTraining(
                f"the loss became {loss.item()} at epoch {epoch}: training diverged. The learning "
                f"rate ({settings.lr:g}) is the usual cause; try one 3-10x lower.")
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.scheduler is not None:
            t.scheduler.step()
        loss_sum += target_loss.item() * len(idx)
        correct += (logits.argmax(1) == labels).sum().item()
        t.bar.update()
    return loss_sum / len(train), correct / len(train)


def _lr_now(optimizer: torch.optim.Optimizer, settings: FitSettings) -> float:
    """`lr` as the schedule has scaled it by now (the top block's rate)."""
    group = optimizer.param_groups[0]
    return settings.lr * group["lr"] / group.get("initial_lr", group["lr"])


def fit(model: nn.Module, task, *, lr: float, epochs: int, frozen_depth: int | None = None,
        patience: int | None = None, min_delta: float = 0.0, restore_best: bool | None = None,
        head_lr: float | None = None, lr_decay: float | None = None, block_lrs: dict | None = None,
        optimizer: str = "adamw", weight_decay: float = 0.01, schedule: str = "constant",
        warmup: float = 0.0, unfreeze_every: int | None = None, unfreeze_to: int = 0,
        augment=None, batch_size: int = 32, seed: int = 0, device: str = "auto",
        max_length: int | None = None, source: Source | None = None, l2sp: float = 0.0,
        rehearsal: float = 0.0, cache_frozen: bool = True, progress: bool = True,
        callbacks: Sequence[Callable[[History], None]] = (), stop_event: threading.Event | None = None,
        eval_batch_size: int = 256) -> History:
    """Fine-tune `model` on `task.train`, validating on `task.val` after every epoch.

    lr:           learning rate of the top block; head_lr: the head's (default: lr).
    lr_decay:     layer-wise rates: each block down from the top gets lr_decay times the one above
                  (ULMFiT, BERT recipes); block_lrs: explicit rates by block name (ftlab.blocks).
    frozen_depth: freeze this many blocks from the input first (None: leave freezing as it is).
    unfreeze_every: gradual unfreezing: every this many epochs one more block from the top trains,
                  down to frozen depth `unfreeze_to`; the History's rows record each epoch's depth.
    patience:     stop after this many epochs without a val-loss improvement > min_delta, and put
                  the best epoch's weights back (restore_best, default: on when patience is set).
    optimizer:    "adamw" (default) or "sgd" (momentum 0.9); weight decay skips biases and norms.
    schedule:     "constant" or "cosine" (per step, to 0 at the last step), after `warmup` (a fraction
                  of all steps, rising linearly to lr): torch.optim.lr_scheduler does both.
    augment:      images only: "light" or a torchvision.transforms.v2 pipeline, applied to training
                  batches on the fly (seeded). The frozen-prefix cache cannot serve augmented inputs.
    device:       "auto" (CUDA, then MPS, then CPU), mixed precision on CUDA.
    max_length:   tokens per text (default: the model's `max_length`).
    source:       a `Source(task, head)`: the task the model did before. Its test accuracy through
                  that head is measured at epoch 0 and after every epoch (`source_acc`, `source_loss`).
                  Forgetting = source accuracy before fine-tuning minus after, in points.
    l2sp:         strength of the L2-SP penalty pulling the body toward its starting weights (0 = off).
    rehearsal:    fraction of each batch added as source-task training examples (needs `source`).
    callbacks:    functions called with the History after epoch 0 and every epoch (live plots);
                  raise StopTraining to end the run. stop_event: set it (from another thread) to stop.

    Every setting is checked by `ftlab.settings.FitSettings` (one place) before anything changes.
    A KeyboardInterrupt or a stop ends the run cleanly: the history so far is returned and the best
    weights are in the model. A non-finite loss ends it as "diverged" (the learning rate is the
    usual cause), with the best weights restored.
    """
    settings = FitSettings(
        lr=lr, epochs=epochs, frozen_depth=frozen_depth, patience=patience, min_delta=min_delta,
        restore_best=restore_best, head_lr=head_lr, lr_decay=lr_decay, block_lrs=block_lrs, optimizer=optimizer,
        weight_decay=weight_decay, schedule=schedule, warmup=warmup, unfreeze_every=unfreeze_every,
        unfreeze_to=unfreeze_to, augment=augment, batch_size=batch_size, seed=seed, device=device,
        max_length=max_length, l2sp=l2sp, rehearsal=rehearsal)
    return _fit(model, task, settings, source=source, cache_frozen=cache_frozen, progress=progress,
                callbacks=callbacks, stop_event=stop_event, eval_batch_size=eval_batch_size)


def _fit(model: nn.Module, task, settings: FitSettings, *, source: Source | None, cache_frozen: bool,
         progress: bool, callbacks: Sequence[Callable[[History], None]], stop_event, eval_batch_size: int) -> History:
    _check_task(model, task)
    _check_against_model(model, task, settings, source)
    augment = None
    if settings.augment is not None:
        from .augment import resolve_augment

        augment = resolve_augment(settings.augment)
    start_depth = _start_depth(model, settings)
    # Last, so a call that fails its checks leaves the model as it was. With gradual unfreezing the
    # optimizer and the L2-SP anchors are built at the final depth, so blocks unfrozen later are in them.
    gradual = settings.unfreeze_every is not None
    if gradual:
        freeze(model, settings.unfreeze_to)
    elif settings.frozen_depth is not None:  # None: freezing stays exactly as the caller left it
        freeze(model, start_depth)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model.to(device)
    head_ids = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    opt = make_optimizer(model, name=settings.optimizer, lr=settings.lr, head_lr=settings.head_lr,
                         weight_decay=settings.weight_decay, lr_decay=settings.lr_decay, block_lrs=settings.block_lrs)
    anchors = ({name: p.detach().clone() for name, p in model.named_parameters()
                if p.requires_grad and id(p) not in head_ids} if settings.l2sp > 0 else {})
    if gradual:
        freeze(model, start_depth)

    config = {**settings.to_dict(), "frozen_depth": start_depth,
              "head_lr": settings.head_lr if settings.head_lr is not None else settings.lr,
              "restore_best": settings.restores_best, "device": str(device),
              "task": dict(getattr(task, "config", {})), "weights": getattr(model, "weights_name", None),
              "model": type(model).__name__,
              "source": dict(getattr(source.task, "config", {}), label=source.name) if source else None}
    history = History(config=config)
    started = time.perf_counter()

    if source is not None:
        source.head.to(device).requires_grad_(False)  # the old head is a fixed measuring instrument
    data = _prepare(model, task, source, settings, device, cache_frozen, eval_batch_size)
    usable = not data.note
    _use_depth(data, model, start_depth, device, usable, eval_batch_size)
    history.summary = {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                       "total_parameters": sum(p.numel() for p in model.parameters()),
                       "cached_prefix": data.cached, "train_examples": len(data.raw["train"]),
                       "cache": "frozen prefix cached" if data.cached else (data.note or "nothing frozen to cache")}

    def measure(epoch: int, train_loss: float, train_acc: float, seconds: float, lr_now: float) -> dict:
        val = _score(model, data.view["val"], data.depth, data.cached, device, eval_batch_size)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": lr_now, "seconds": seconds}
        if gradual:
            row["frozen_depth"] = data.depth
        if source is not None:
            src = _score(model, data.view["source"], data.depth, data.cached, device, eval_batch_size,
                         head=source.head)
            row.update(source_loss=src["loss"], source_acc=src["accuracy"])
        return row

    def notify() -> None:
        for callback in callbacks:
            callback(history)

    # Epoch 0: where the pretrained model stands before any training.
    before = _score(model, data.view["train"], data.depth, data.cached, device, eval_batch_size)
    history.append(measure(0, before["loss"], before["accuracy"], 0.0, settings.lr))
    stopping = EarlyStopping(model, history.rows[0]["val_loss"], patience=settings.patience,
                             min_delta=settings.min_delta)
    history.best_epoch = 0

    steps_per_epoch = -(-len(data.raw["train"]) // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    scheduler = make_scheduler(opt, schedule=settings.schedule, warmup_steps=round(settings.warmup * total_steps),
                               total_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(settings.seed)
    replay = (RehearsalSampler(len(data.raw["replay"]), settings.rehearsal, generator)
              if settings.rehearsal > 0 else None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, disable=not progress, desc="fine-tuning", unit="batch", leave=True)
    trainer = _Trainer(model, settings, device, opt, scheduler, scaler, generator, anchors, replay, source,
                       augment, stop_event, bar)
    try:
        notify()
        for epoch in range(1, settings.epochs + 1):
            epoch_start = time.perf_counter()
            depth = unfreeze_schedule(epoch, start=start_depth, every=settings.unfreeze_every, to=settings.unfreeze_to)
            if depth != data.depth:  # gradual unfreezing: one more block trains from now on
                freeze(model, depth)
                _use_depth(data, model, depth, device, usable, eval_batch_size)
            train_loss, train_acc = _train_epoch(trainer, data, epoch, history)
            bar.set_description(f"epoch {epoch}/{settings.epochs}")
            row = measure(epoch, train_loss, train_acc, time.perf_counter() - epoch_start, _lr_now(opt, settings))
            history.append(row)
            bar.set_postfix(val_loss=f"{row['val_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")
            if not math.isfinite(row["val_loss"]):
                history.diverged = True
                raise StopTraining(f"the validation loss became {row['val_loss']} at epoch {epoch}: "
                                   f"training diverged; try a learning rate 3-10x lower than {settings.lr:g}.")
            stop = stopping.update(model, epoch, row["val_loss"])
            history.best_epoch = stopping.best_epoch
            notify()
            if stop and epoch < settings.epochs:
                history.stopped_early = True
                history.message = (f"early stopping: no val-loss improvement for {settings.patience} epochs; "
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
    if settings.restores_best or history.diverged or history.interrupted:
        model.load_state_dict(stopping.best_state)
        history.restored_best = True
    if history.diverged:
        warnings.warn(history.message, stacklevel=3)
    elif history.interrupted and history.message.startswith("interrupted"):  # the notebook's stop button
        print(f"ftlab.fit: {history.message}; best epoch {history.best_epoch}'s weights are in the model")
    history.summary["seconds"] = time.perf_counter() - started
    if history.interrupted or history.diverged:
        _notify_end(callbacks, history)
    return history


def _notify_end(callbacks, history: History) -> None:
    """One last call after a run ended early, so live views show where it stopped."""
    for callback in callbacks:
        try:
            callback(history)
        except (StopTraining, KeyboardInterrupt):  # the run is over already
            pass


def fine_tune(model: nn.Module, task, *, lr: float, epochs: int, frozen_epochs: int = 1, lr_spread: float = 100.0,
              patience: int | None = None, batch_size: int = 32, seed: int = 0, device: str = "auto",
              source: Source | None = None, progress: bool = True,
              callbacks: Sequence[Callable[[History], None]] = ()) -> History:
    """fastai's `fine_tune` recipe: train the new head alone, then everything at gentler, layer-wise rates.

    1. `frozen_epochs` epochs with the whole backbone frozen (a linear probe) at `lr`: the random head
       learns before its gradients reach the pretrained blocks.
    2. `epochs` epochs with nothing frozen at lr / 2, the rates spread geometrically over the blocks
       from lr / 2 / lr_spread (the input side) to lr / 2 (the top), as fastai's slice(lr/100, lr).
    One History: epochs are numbered on from phase 1, and each row records its frozen depth.
    """
    if isinstance(frozen_epochs, bool) or not isinstance(frozen_epochs, int) or frozen_epochs < 0:
        raise ValueError(f"fine_tune: frozen_epochs must be an integer >= 0, got {frozen_epochs!r}")
    if not (isinstance(lr_spread, (int, float)) and lr_spread >= 1):
        raise ValueError(f"fine_tune: lr_spread must be >= 1 (1 = one rate for every block), got {lr_spread!r}")
    common = dict(batch_size=batch_size, seed=seed, device=device, source=source, progress=progress,
                  callbacks=callbacks)
    depth = len(blocks(model))
    first = None
    if frozen_epochs:
        first = fit(model, task, lr=lr, epochs=frozen_epochs, frozen_depth=depth, **common)
        if first.interrupted or first.diverged:
            return first
    decay = (1 / lr_spread) ** (1 / max(1, depth - 1))
    second = fit(model, task, lr=lr / 2, head_lr=lr / 2, lr_decay=decay, epochs=epochs, frozen_depth=0,
                 patience=patience, **common)
    return second if first is None else _joined(first, second, depth)


def _joined(first: History, second: History, first_depth: int) -> History:
    """Two consecutive runs as one History (the second's epoch 0 is the first's last epoch: dropped)."""
    offset = first.epochs_run
    rows = [{**r, "frozen_depth": r.get("frozen_depth", first_depth)} for r in first.rows]
    rows += [{**r, "epoch": r["epoch"] + offset, "frozen_depth": r.get("frozen_depth", 0)}
             for r in second.rows if r["epoch"] > 0]
    joined = History(config={**second.config, "recipe": "fine_tune", "phases": [first.config, second.config]},
                     rows=rows, stopped_early=second.stopped_early, interrupted=second.interrupted,
                     diverged=second.diverged, restored_best=second.restored_best, message=second.message,
                     summary={**second.summary, "seconds": first.summary.get("seconds", 0) + second.summary.get("seconds", 0)})
    joined.best_epoch = None if second.best_epoch is None else (
        second.best_epoch + offset if second.best_epoch > 0 else first.epochs_run)
    return joined
