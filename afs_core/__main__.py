"""``python -m afs_core``: the ``afs`` command."""

from afs_core.cli import entry_point

entry_point()
