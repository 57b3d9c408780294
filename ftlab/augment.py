"""Data augmentation for images: random, label-preserving changes to training examples.

    pipeline = ftlab.augment.resolve_augment("light")        # or any torchvision.transforms.v2 pipeline
    images = ftlab.augment.augment_batch(pipeline, images, generator)

Augmentation applies to training examples only, drawn afresh at every step, so the model never sees
exactly the same image twice; validation, test and source data stay as they are, or the scores
would measure the augmentation instead of the model. Because every step's inputs differ, the
frozen-prefix cache cannot serve augmented training: `fit` runs the frozen blocks at every step.

Images are ftlab's raw images, (B, C, H, W) float in [0, 1] before `model.preprocess`: 8x8 for
digits, 28x28 for Fashion-MNIST.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable

import numpy as np
import torch

__all__ = ["light", "PRESETS", "resolve_augment", "augment_batch"]


def light() -> Callable[[torch.Tensor], torch.Tensor]:
    """Small shifts, turns and zooms: at 28x28, up to +-3 pixels, +-10 degrees, 90-110% size.

    No horizontal flip: a mirrored 2, 5 or 7 is another glyph (or none), not the same digit, and a
    flipped garment may be fine but ftlab's presets must serve digits too. Shifts are a fraction of
    the image (10%), so on 8x8 digits they are rounded to -1, 0 or +1 pixel.
    """
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                           interpolation=v2.InterpolationMode.BILINEAR,  # NEAREST (the default) jags 8x8 digits
                           fill=0.0)  # ftlab's images are bright ink on a black background


PRESETS: dict[str, Callable[[], Callable]] = {"light": light}


def resolve_augment(spec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None or "none" -> None (no augmentation); a preset name -> its pipeline; a callable -> itself.

    A callable takes one image (C, H, W) and returns one of the same shape, as a
    torchvision.transforms.v2 pipeline does, e.g. v2.Compose([v2.RandomRotation(15)]).
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"augment={spec!r} is not a preset; use one of {', '.join(map(repr, PRESETS))}, "
                             "'none', None, or a torchvision.transforms.v2 pipeline")
        return PRESETS[spec]()
    if callable(spec):
        return spec
    raise ValueError(f"augment must be None, 'none', a preset ({', '.join(map(repr, PRESETS))}) or a "
                     f"callable such as a torchvision.transforms.v2 pipeline, got {type(spec).__name__} {spec!r}")


@contextlib.contextmanager
def _seeded(seed: int):
    """Run with torch's CPU, Python's and NumPy's random generators seeded, then put them all back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    # fork_rng restores torch's CPU generator; seed only that one (torch.manual_seed would also reseed
    # every CUDA generator, which fork_rng(devices=[]) would not put back)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def augment_batch(pipeline: Callable[[torch.Tensor], torch.Tensor] | None, images: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Apply `pipeline` to each image of a (B, C, H, W) batch in [0, 1]; same shape, dtype and range.

    v2 transforms draw their parameters from torch's global generator, and on a batch they would draw
    once for all images. So each image is transformed on its own, under a global generator seeded from
    one number drawn from `generator`: the same generator state gives the same batch, and the caller's
    global random state is left exactly as it was. pipeline=None returns `images` and draws nothing,
    so a run without augmentation takes the same random path as before augmentation existed.
    """
    if pipeline is None:
        return images
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point()):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"augment_batch takes a float batch of images (B, C, H, W) in [0, 1], got {shape}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if len(images) == 0:
        return images
    with _seeded(seed):
        out = [pipeline(image) for image in images]
    bad = next((o for o in out if not isinstance(o, torch.Tensor) or o.shape != images.shape[1:]
                or not o.is_floating_point()), None)
    if bad is not None:
        got = f"{bad.dtype} {tuple(bad.shape)}" if isinstance(bad, torch.Tensor) else type(bad).__name__
        raise ValueError(f"the augmentation must return each image as floats of its shape "
                         f"{tuple(images.shape[1:])}, got {got}; resize or crop back to the input size "
                         "(e.g. v2.RandomResizedCrop(size)) and keep float images in [0, 1]")
    # interpolation can overshoot [0, 1] by rounding (or more, with a user's pipeline)
    return torch.stack(out).to(images.dtype).clamp_(0.0, 1.0)
