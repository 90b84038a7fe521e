"""Telegram channel for AFS notifications (``pip install afs-telegram``): messages from
a bot to one or several chats, through the Bot API."""

from afs_telegram.channel import TelegramChannel

__all__ = ["TelegramChannel"]
