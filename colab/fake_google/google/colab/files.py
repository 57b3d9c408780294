"""`google.colab.files.download`: on Colab it makes the browser save a file; here it checks the
file exists and says where it is (the emulation has no browser to send it to)."""
from __future__ import annotations

import os


def download(filename: str) -> None:
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")  # Colab's own message
    print(f"[emulated Colab] download of {os.path.abspath(filename)}")
