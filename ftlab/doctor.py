"""What this machine has: Python, torch, the device, and which datasets and weights work offline.

    ftlab doctor                      # from the command line
    ftlab.doctor.report()             # the same, as a dict (notebooks show it as a table)
"""
from __future__ import annotations

import os
import platform
import sys

from .paths import home

__all__ = ["report", "format_report", "in_colab"]


def in_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, mixed precision on)"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _fashion() -> tuple[bool, str]:
    from .datasets import FASHION_HELP, fashion_mnist_location

    folder = fashion_mnist_location()
    return (True, str(folder)) if folder else (False, FASHION_HELP.splitlines()[1].strip())


def _bbc() -> tuple[bool, str]:
    try:
        from .datasets import bbc_news_location

        return True, str(bbc_news_location())
    except Exception as error:
        return False, str(error)


def _minilm() -> tuple[bool, str]:
    from .weights import WeightsError, get_weights

    entry = get_weights("all-MiniLM-L6-v2")
    path = entry.location()
    if path is None:
        return False, entry.meta["install"]
    try:
        entry.verify()
    except WeightsError as error:
        return False, str(error)
    return True, f"{path.parent} (sha256 verified)"


def _ftlab_resnet(name: str) -> tuple[bool, str]:
    from .pretrain import cache_status, checkpoint_path, read_card

    status = cache_status(name)
    if status == "ok":
        card = read_card(name)
        return True, (f"{checkpoint_path(name)} (test accuracy "
                      f"{card['test_accuracy']:.1%}, built in {card['train_seconds']:.0f} s)")
    return False, f"{status}: built on first use, or now with `ftlab pretrain {name}`"


def _imagenet() -> tuple[bool, str]:
    from .weights import get_weights

    path = get_weights("imagenet").location()  # torchvision's cache file for ResNet18_Weights.IMAGENET1K_V1
    if path.exists():
        return True, str(path)
    return False, "not cached; downloaded by torchvision on first use when online"


def report() -> dict:
    """Everything `ftlab doctor` prints, as {section: {item: (ok, detail)}}."""
    import torch
    import torchvision

    from . import __version__

    return {
        "environment": {
            "python": (sys.version_info >= (3, 10), platform.python_version()),
            "ftlab": (True, __version__),
            "torch": (True, f"{torch.__version__} (torchvision {torchvision.__version__})"),
            "device": (True, _device()),
            "colab": (True, "yes" if in_colab() else "no"),
            "FTLAB_HOME": (True, str(home())),
        },
        "datasets": {
            "fashion-mnist": _fashion(),
            "digits": (True, "bundled with scikit-learn"),
            "bbc-news": _bbc(),
        },
        "weights": {
            "resnet18 fashion-mnist (ftlab)": _ftlab_resnet("resnet18-fashion-mnist"),
            "resnet18 fashion-mnist-6 (ftlab)": _ftlab_resnet("resnet18-fashion-mnist-6"),
            "bert all-MiniLM-L6-v2": _minilm(),
            "resnet18 imagenet (torchvision)": _imagenet(),
        },
    }


def format_report(result: dict | None = None) -> str:
    result = result or report()
    lines = []
    for section, items in result.items():
        lines.append(section)
        for name, (ok, detail) in items.items():
            lines.append(f"  {'ok ' if ok else '-- '} {name:<34} {detail}")
    return "\n".join(lines)
