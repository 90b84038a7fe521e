"""Twilio SMS channel for AFS notifications (``pip install afs-twilio``): a short text
for what must wake someone, ERROR and CRITICAL events by default."""

from afs_twilio.notifier import TwilioNotifier

__all__ = ["TwilioNotifier"]
