"""The ``embedcache`` command line: the group and its error boundary in :mod:`.main`, one
module per command family, shared options and output in :mod:`.options`."""

from .main import main

__all__ = ["main"]
