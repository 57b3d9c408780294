"""Colab's kernel entry point: import `google.colab` (this package), then start ipykernel.

Colab starts its kernel through `google.colab._kernel`; the emulation's kernel spec runs
`python -m google.colab._kernel -f {connection_file}`, so `google.colab` is in sys.modules before
the first cell, exactly as there.

It also imitates one known Colab behaviour (colabtools #3373): widget state sent from a thread
other than the kernel's main thread never reaches the page. Such messages are dropped here and
each is logged (one line) to $COLAB_EMULATION_LOG, so a test can say why something never showed.
COLAB_SHOW_THREAD_UPDATES=1 turns that off. An approximation: Colab's exact rule is not documented.
"""
from __future__ import annotations

import os
import threading


def drop_background_widget_updates(log_path: str | None) -> None:
    """Wrap ipywidgets' one sending method (`Widget._send`, the same in 7.x and 8.x)."""
    from ipywidgets.widgets import widget

    send = widget.Widget._send

    def send_from_main_thread_only(self, msg, buffers=None):
        if threading.current_thread() is threading.main_thread():
            return send(self, msg, buffers)
        if log_path:
            keys = ",".join(sorted((msg.get("state") or {}).keys())) if isinstance(msg, dict) else ""
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"dropped {type(self).__name__} update ({keys}) from thread "
                          f"{threading.current_thread().name!r}\n")

    widget.Widget._send = send_from_main_thread_only


if __name__ == "__main__":
    if os.environ.get("COLAB_SHOW_THREAD_UPDATES") != "1":
        drop_background_widget_updates(os.environ.get("COLAB_EMULATION_LOG"))
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
