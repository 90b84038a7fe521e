"""Desktop (macOS, Linux, Windows) channel for AFS notifications (``pip install afs-desktop``)."""

from afs_desktop.notifier import DesktopNotifier

__all__ = ["DesktopNotifier"]
