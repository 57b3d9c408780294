"""ftlab.augment: presets, seeding, and what augmentation may and may not change."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ftlab.augment import PRESETS, augment_batch, light, resolve_augment

from conftest import make_image_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 16, size: int = 28) -> torch.Tensor:
    """Bright strokes on black, like ftlab's digits and garments: a shift or turn visibly moves them."""
    return make_image_task(n=n, size=size).train.images


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_gives_the_same_batch_and_another_seed_another():
    images = _images()
    pipeline = light()
    first = augment_batch(pipeline, images, _generator(7))
    again = augment_batch(light(), images, _generator(7))  # a fresh pipeline too: no state in it
    other = augment_batch(pipeline, images, _generator(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_successive_batches_from_one_generator_differ_and_replay():
    images = _images()
    generator = _generator(0)
    steps = [augment_batch(light(), images, generator) for _ in range(3)]
    assert not torch.equal(steps[0], steps[1])  # a fresh draw at every step, as in training
    replay = _generator(0)
    assert all(torch.equal(step, augment_batch(light(), images, replay)) for step in steps)


def test_each_image_gets_its_own_draw():
    # v2 on a whole batch would move every image the same way; ftlab transforms them one by one
    image = _images(1)[0]
    batch = image.expand(8, -1, -1, -1).clone()
    out = augment_batch(light(), batch, _generator(0))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_global_random_state_is_left_untouched():
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)

    def noisy(image):  # a user's transform that draws from all three global generators
        return (image + 0 * torch.rand(1) + 0 * random.random() + 0 * np.random.rand()).float()

    augment_batch(noisy, _images(4), _generator(0))
    augment_batch(light(), _images(4), _generator(1))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_python_and_numpy_randomness_in_a_custom_pipeline_is_seeded_too():
    def jitter(image):
        return (image * random.uniform(0.5, 1.0) * float(np.random.uniform(0.5, 1.0))).float()

    images = _images(4)
    assert torch.equal(augment_batch(jitter, images, _generator(3)), augment_batch(jitter, images, _generator(3)))


@pytest.mark.parametrize("size, channels, dtype", [(28, 1, torch.float32), (8, 1, torch.float32),
                                                   (28, 3, torch.float32), (16, 1, torch.float64)])
def test_shape_dtype_and_range_are_kept(size, channels, dtype):
    images = torch.rand(6, channels, size, size, generator=_generator(0)).to(dtype)
    out = augment_batch(light(), images, _generator(0))
    assert out.shape == images.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1


def test_the_input_batch_is_not_modified():
    images = _images()
    before = images.clone()
    augment_batch(light(), images, _generator(0))
    assert torch.equal(images, before)


def test_the_light_preset_changes_images_but_keeps_them_recognisable():
    images = _images(32)
    out = augment_batch(light(), images, _generator(0))
    changed = (out - images).abs().flatten(1).amax(1) > 0.05
    assert changed.float().mean() > 0.5  # most images move
    # small moves: far closer to its own original than to a different image of another class
    own = (out - images).pow(2).flatten(1).mean(1)
    other = (out - images.roll(1, 0)).pow(2).flatten(1).mean(1)
    assert (own < other).float().mean() > 0.9


def test_light_does_not_flip():
    # an asymmetric image (a bar at the left edge): a horizontal flip would put ink at the right edge
    image = torch.zeros(1, 1, 28, 28)
    image[..., 4:24, 1:4] = 1.0
    out = augment_batch(light(), image.expand(64, -1, -1, -1).clone(), _generator(0))
    assert out[..., 14:].sum() < 0.05 * out.sum()


def test_none_draws_nothing_and_returns_the_images():
    images = _images(4)
    generator = _generator(0)
    state = generator.get_state()
    assert augment_batch(None, images, generator) is images
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("spec", [None, "none"])
def test_resolve_no_augmentation(spec):
    assert resolve_augment(spec) is None


def test_resolve_presets_and_callables():
    assert set(PRESETS) >= {"light"}
    assert isinstance(resolve_augment("light"), v2.Transform)
    pipeline = v2.Compose([v2.RandomRotation(15)])
    assert resolve_augment(pipeline) is pipeline
    images = _images(4)
    out = augment_batch(resolve_augment(pipeline), images, _generator(0))
    assert out.shape == images.shape and not torch.equal(out, images)


@pytest.mark.parametrize("spec, message", [("heavy", "'light'"), ("Light", "'light'"), (3, "preset"),
                                           (["light"], "callable")])
def test_bad_spec_names_the_presets(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_augment(spec)


def test_a_pipeline_that_changes_the_size_is_refused():
    with pytest.raises(ValueError, match=r"shape \(1, 28, 28\)"):
        augment_batch(v2.RandomCrop(20), _images(2), _generator(0))


def test_a_pipeline_that_returns_integers_is_refused():
    with pytest.raises(ValueError, match="float"):
        augment_batch(v2.ToDtype(torch.uint8, scale=True), _images(2), _generator(0))


@pytest.mark.parametrize("images", [torch.rand(1, 28, 28), torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "pixels"])
def test_bad_images_are_refused(images):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment_batch(light(), images, _generator(0))


# --- inside fit: training examples only, seeded ---------------------------------------------------

def _fit(seed: int = 0, **options):
    import ftlab
    from conftest import make_tiny_resnet

    model = make_tiny_resnet()
    history = ftlab.fit(model, make_image_task(), lr=1e-3, epochs=2, frozen_depth=2, seed=seed,
                        progress=False, **options)
    return model, history


def _rows(history) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.rows]


def test_fit_with_augmentation_is_the_same_run_for_the_same_seed():
    first_model, first = _fit(augment="light")
    again_model, again = _fit(augment="light")
    _, other = _fit(seed=1, augment="light")
    assert _rows(first) == _rows(again)
    assert all(torch.equal(a, b) for a, b in zip(first_model.state_dict().values(),
                                                 again_model.state_dict().values()))
    assert _rows(first) != _rows(other)
    _, plain = _fit()
    assert _rows(first)[1:] != _rows(plain)[1:]  # the augmentation did change training


def test_fit_augments_training_examples_only():
    import ftlab
    from conftest import make_tiny_resnet

    seen = []

    def recording(image):  # a pipeline that records what it is given and shifts it one pixel
        seen.append(image.clone())
        return image.roll(1, -1)

    task, source_task = make_image_task(seed=0), make_image_task(seed=5)
    model = make_tiny_resnet()
    source_head = ftlab.models.replace_head(model, task.num_classes)
    epochs = 2
    history = ftlab.fit(model, task, lr=1e-3, epochs=epochs, frozen_depth=2, augment=recording, progress=False,
                        source=ftlab.Source(source_task, source_head), rehearsal=0.5)
    assert history.epochs_run == epochs
    train = task.train.images.flatten(1)
    matches = torch.stack([(train == image.flatten()).all(1) for image in seen])  # (seen, train)
    # every augmented image is a training image, each one once per epoch: no validation, test,
    # source or rehearsal example ever went through the pipeline
    assert len(seen) == epochs * len(train)
    assert matches.any(1).all()
    assert matches.sum(0).tolist() == [epochs] * len(train)


def test_fit_says_the_frozen_prefix_cache_is_off_with_augmentation():
    _, history = _fit(augment="light")
    assert history.summary["cached_prefix"] is False
    assert "augment" in str(history.summary)
    _, plain = _fit()
    assert plain.summary["cached_prefix"] is True  # the same run without augmentation is cached
