"""Email channel for AFS notifications (``pip install afs-email``)."""

from afs_email.notifier import EmailNotifier

__all__ = ["EmailNotifier"]
