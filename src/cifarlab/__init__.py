"""cifarlab: a workbench for CIFAR-100 classification research."""

__version__ = "0.1.0"


class CifarlabError(Exception):
    """An error the user can fix; the CLI prints its message as one line, no traceback."""
