"""ntfy channel for AFS notifications (``pip install afs-ntfy``): push to phones
through ntfy.sh or a self-hosted ntfy server."""

from afs_ntfy.channel import NtfyChannel

__all__ = ["NtfyChannel"]
