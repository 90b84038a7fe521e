"""Moved to :mod:`afs_core.channels.http`; kept so plugins written for 0.1 still import."""

from afs_core.channels.http import HttpAnswer, WebhookSession  # noqa: F401
