"""Discord channel for AFS notifications (``pip install afs-discord``)."""

from afs_discord.notifier import DiscordNotifier

__all__ = ["DiscordNotifier"]
