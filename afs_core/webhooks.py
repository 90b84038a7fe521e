"""Moved to :mod:`afs_core.channels.webhook`; kept so plugins written for 0.1 still import."""

from afs_core.channels.webhook import *  # noqa: F403
from afs_core.channels.webhook import classify_status, encode_json, is_loopback_host, parse_retry_after  # noqa: F401
