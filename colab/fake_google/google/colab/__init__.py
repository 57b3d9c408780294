"""A stand-in for Colab's `google.colab`, for colab/test_emulation.py only (never installed).

On Colab the kernel imports `google.colab` before any cell runs, which is how notebooks (and
`ftlab.doctor.in_colab`) tell that they are there: the lessons' first cell tests
`"google.colab" in sys.modules`. The emulation's kernel starts through `google.colab._kernel`, as
Colab's does, so the package is imported the same way. Only what the course might call is here.
"""
from . import files, output

__all__ = ["files", "output"]
__version__ = "0.0.0+ftlab-emulation"
EMULATED = True  # Colab's real module has no such name: code can tell the two apart if it must
