"""Slack channel for AFS notifications (``pip install afs-slack``)."""

from afs_slack.notifier import SlackNotifier

__all__ = ["SlackNotifier"]
