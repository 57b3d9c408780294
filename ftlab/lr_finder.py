"""The learning-rate finder: a range test that tells you where to start before you fit.

    result = ftlab.lr_find(model, task, frozen_depth=3)
    result.suggestion                  # e.g. 0.0021: pass it to fit(lr=...)
    ftlab.plot_lr_find(result)         # the loss against the learning rate, the suggestion marked

The learning rate rises exponentially from `start_lr` to `end_lr` over `num_steps` mini-batches,
one optimizer step each (Smith 2015, "Cyclical Learning Rates"; fastai's `lr_find`). The loss is
flat where the rate is too small to change anything, falls where it learns, and explodes where the
rate is too large; the test stops there. The model is left exactly as it was found: weights,
BatchNorm statistics, `requires_grad`, train/eval modes, gradients, device and torch's random state.
"""
from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .features import encode, prefix_features
from .freezing import blocks, freeze, train_mode
from .freezing import frozen_depth as current_frozen_depth
from .optim import make_optimizer
from .training import _autocast, _head_mismatch, _logits, _to, resolve_device

__all__ = ["lr_find", "LRFinderResult", "valley"]

RULE = "valley"
WHY = ("the middle (on the log scale) of the valley, where the smoothed loss falls from its starting level "
       "to its lowest point: far from the flat start, where the rate is too small to learn, and from the "
       "bottom, next to where it blows up")


@dataclass(frozen=True)
class LRFinderResult:
    """What a range test measured: one entry per step, and the learning rate it suggests."""

    lrs: tuple[float, ...]         # the learning rate of each step (the body's; every group scaled alike)
    losses: tuple[float, ...]      # the training loss, smoothed (bias-corrected moving average)
    raw_losses: tuple[float, ...]  # the loss of each mini-batch as it was
    suggestion: float              # the learning rate to start from (nan when no falling stretch was found)
    rule: str = RULE               # how the suggestion was chosen
    frozen_depth: int = 0          # the depth the test ran at
    diverged: bool = False         # the loss exploded and the test stopped before `end_lr`
    note: str = ""                 # a warning in words, when there is one

    def __repr__(self) -> str:
        if not self.lrs:
            return f"LRFinderResult(no steps: the first loss was not finite, frozen depth {self.frozen_depth})"
        where = f"stopped at {self.lrs[-1]:.1e}: the loss exploded" if self.diverged else f"up to {self.lrs[-1]:.1e}"
        return (f"LRFinderResult(suggestion {self.suggestion:.2e} by the {self.rule} rule, {len(self.lrs)} steps "
                f"from {self.lrs[0]:.1e}, {where}, frozen depth {self.frozen_depth})")

    def _repr_html_(self) -> str:
        if not self.lrs:
            return f"<b>Learning-rate range test</b>: {html.escape(repr(self))}"
        note = f"<br><span style='color:#b00020'>{html.escape(self.note)}</span>" if self.note else ""
        stop = (f"the loss exploded at {self.lrs[-1]:.1e}, where the test stopped" if self.diverged
                else f"it ran to {self.lrs[-1]:.1e} without exploding")
        return (f"<b>Learning-rate range test</b> at frozen depth {self.frozen_depth}: {len(self.lrs)} steps "
                f"from {self.lrs[0]:.1e}; {stop}.<br>Suggested learning rate: <b>{self.suggestion:.2e}</b> "
                f"({self.rule} rule: {WHY}).{note}")


def valley(losses, *, level: float = 0.05) -> int | None:
    """The index of the suggestion in `losses`: the middle of the valley, or None if there is none.

    The valley runs from the last step where the loss was still at its starting level (within
    `level` of the whole fall) down to its lowest point; the suggestion is its middle in steps,
    which is the geometric middle of its learning rates. The starting level is the median of the
    first tenth of the curve, not its first point: one lucky or unlucky first batch would move it.
    None when the loss never fell by 1% of that level.

        valley([5, 5, 4, 3, 2, 1, 9])   # 3: the valley is steps 1..5
    """
    n = len(losses)
    if n < 3:
        return None
    start = statistics.median(losses[:max(1, n // 10)])
    bottom = min(range(n), key=lambda i: losses[i])  # the first lowest point
    fall = start - losses[bottom]
    if not fall > 0.01 * abs(start):
        return None
    threshold = start - level * fall
    top = max((i for i in range(bottom) if losses[i] >= threshold), default=0)
    return (top + bottom) // 2 if bottom - top >= 2 else None


def _check(model, task, frozen_depth, start_lr, end_lr, num_steps, batch_size, smoothing, diverge_factor,
           weight_decay, head_lr_ratio) -> None:
    def positive(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)

    def whole(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    problems = []
    if not positive(start_lr) or not positive(end_lr):
        problems.append(f"start_lr and end_lr must be positive numbers, got {start_lr!r} and {end_lr!r}")
    elif start_lr >= end_lr:
        problems.append(f"start_lr ({start_lr:g}) must be below end_lr ({end_lr:g}): the rate rises from one "
                        f"to the other (the defaults 1e-7 to 10 span every useful rate)")
    if not whole(num_steps, 2):
        problems.append(f"num_steps must be a whole number >= 2 (100 is usual), got {num_steps!r}")
    if not whole(batch_size, 1):
        problems.append(f"batch_size must be a positive whole number, got {batch_size!r}")
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
        problems.append(f"smoothing must be in [0, 1) (0 = none, 0.98 = fastai's), got {smoothing!r}")
    if not (positive(diverge_factor) and diverge_factor > 1):
        problems.append(f"diverge_factor must be a number > 1 (stop when the loss is this many times its best; "
                        f"4 is usual), got {diverge_factor!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        problems.append(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not positive(head_lr_ratio):
        problems.append(f"head_lr_ratio must be a positive number (the head's rate over the body's), "
                        f"got {head_lr_ratio!r}")
    names = [name for name, _ in blocks(model)]
    if frozen_depth is not None and not (whole(frozen_depth, 0) and frozen_depth <= len(names)):
        listed = ", ".join(f"{i}={n}" for i, n in enumerate(names, 1))
        problems.append(f"frozen_depth must be None (leave freezing as it is) or an integer in 0..{len(names)} "
                        f"(blocks: {listed}), got {frozen_depth!r}")
    mismatch = _head_mismatch(model, task)
    if mismatch:
        problems.append(mismatch)
    if problems:
        raise ValueError("lr_find: " + "; ".join(problems))


def _batch_order(n: int, batch_size: int, generator: torch.Generator):
    """Mini-batches of one size for ever, a new shuffle every pass over the data.

    Only full batches (unless the set is smaller than one): losses of 32 and of 3 examples would
    not be comparable along the curve, and BatchNorm cannot train on a batch of one."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def lr_find(model: nn.Module, task, *, frozen_depth: int | None = None, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_steps: int = 100, batch_size: int = 32, smoothing: float = 0.98,
            diverge_factor: float = 4.0, weight_decay: float = 0.01, head_lr_ratio: float = 1.0,
            seed: int = 0, device: str = "auto", max_length: int | None = None,
            progress: bool = True) -> LRFinderResult:
    """The range test on `task.train`: the loss at learning rates from `start_lr` to `end_lr`.

    frozen_depth:  freeze this many blocks for the test (None: as the model is); the frozen prefix is
                   run once (the cache `fit` uses), so only what follows runs each step.
    num_steps:     mini-batches (one step each), cycling through the data as often as needed.
    smoothing:     the loss is an exponential moving average, bias-corrected (fastai's), beta = this;
                   it lags the raw losses by about 1 / (1 - smoothing) steps (the plot shows both).
    diverge_factor: stop when the smoothed loss exceeds this many times its lowest value.
    head_lr_ratio: the head's rate over the body's during the test (fit's head_lr / lr).

    The suggestion follows the "valley" rule (fastai's default since 2021): the middle, on the log
    scale, of the stretch where the smoothed loss falls from its starting level to its lowest point
    (see `valley`). Steepest descent reads a derivative of a noisy curve and jumps with the noise;
    "minimum / 10" leans on the one lowest point, which sits right before the blow-up. The valley
    uses the whole falling part of the curve. (fastai finds its valley as the longest decreasing
    subsequence, which on a flat plateau can start in the noise far to the left; here wiggles of
    less than 5% of the whole fall count as flat.)

    The model is restored bit for bit whatever happens: weights and buffers (BatchNorm statistics
    and counters), `requires_grad`, every module's train/eval mode, gradients, device, RNG state.
    """
    _check(model, task, frozen_depth, start_lr, end_lr, num_steps, batch_size, smoothing, diverge_factor,
           weight_decay, head_lr_ratio)
    device = resolve_device(device)
    saved = _save(model)
    try:
        if frozen_depth is not None:
            freeze(model, frozen_depth)
        depth = current_frozen_depth(model)
        torch.manual_seed(seed)  # dropout draws from the global generator: same seed, same curve
        model.to(device)
        data = encode(model, task.train, max_length=max_length)
        cached = False
        if depth > 0:
            features = prefix_features(model, depth, data, device=device)
            if features is not None:  # None: no prefix split for this family, or over the memory budget
                data, cached = features, True
        result = _range_test(model, data, depth, cached, device, start_lr=start_lr, end_lr=end_lr,
                             num_steps=num_steps, batch_size=batch_size, smoothing=smoothing,
                             diverge_factor=diverge_factor, weight_decay=weight_decay,
                             head_lr_ratio=head_lr_ratio, seed=seed, progress=progress)
    finally:
        _restore(model, saved)
    return result


def _range_test(model, data, depth, cached, device, *, start_lr, end_lr, num_steps, batch_size, smoothing,
                diverge_factor, weight_decay, head_lr_ratio, seed, progress) -> LRFinderResult:
    from tqdm.auto import tqdm

    optimizer = make_optimizer(model, lr=start_lr, head_lr=start_lr * head_lr_ratio, weight_decay=weight_decay)
    base = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    batches = _batch_order(len(data), batch_size, torch.Generator().manual_seed(seed))
    lrs, losses, raw = [], [], []
    average, best, diverged = 0.0, math.inf, False
    train_mode(model)
    bar = tqdm(total=num_steps, disable=not progress, desc="lr range test", unit="batch", leave=False)
    try:
        for step in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))  # exponential, exactly end_lr last
            for group, rate in zip(optimizer.param_groups, base):
                group["lr"] = rate * lr / start_lr  # every group by the same factor: their ratios hold
            idx = next(batches)
            with _autocast(device):
                logits = _logits(model, _to(data.rows(idx), device), depth, cached)
                loss = F.cross_entropy(logits.float(), data.labels[idx].to(device))
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (step + 1))  # bias correction: the first steps are not ~0
            lrs.append(lr), raw.append(value), losses.append(smoothed)
            bar.update()
            if smoothed > diverge_factor * best:
                diverged = True
                break
            best = min(best, smoothed)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    index = valley(losses)
    note = "" if index is not None else (
        "the smoothed loss never fell: no learning rate to suggest. Try a smaller start_lr, more num_steps, "
        "or check that the labels match the inputs")
    return LRFinderResult(lrs=tuple(lrs), losses=tuple(losses), raw_losses=tuple(raw),
                          suggestion=lrs[index] if index is not None else math.nan, rule=RULE,
                          frozen_depth=depth, diverged=diverged, note=note)


def _save(model: nn.Module) -> dict:
    """Everything the range test changes, kept to be put back exactly."""
    parameters = list(model.parameters())
    devices = {t.device for t in [*parameters, *model.buffers()]}
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in parameters],
        "grads": [p.grad for p in parameters],  # the tensors themselves: the test never writes into them
        "training": [(m, m.training) for m in model.modules()],
        "device": devices.pop() if len(devices) == 1 else None,  # a model split over devices stays put
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore(model: nn.Module, saved: dict) -> None:
    if saved["device"] is not None:
        model.to(saved["device"])
    model.load_state_dict(saved["state"])  # copies into the existing tensors: references stay valid
    for p, flag, grad in zip(model.parameters(), saved["requires_grad"], saved["grads"]):
        p.requires_grad_(flag)
        p.grad = grad
    for module, flag in saved["training"]:
        module.training = flag  # not .train(flag): that would recurse and overwrite the children's flags
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
