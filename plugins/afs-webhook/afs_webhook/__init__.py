"""Signed-webhook channel for AFS notifications (``pip install afs-webhook``).

Senders configure ``WEBHOOK_URL`` and ``WEBHOOK_SECRET``; receivers check requests
with :func:`verify` (or any Standard Webhooks library) and validate bodies against
:func:`load_schema`.
"""

from afs_webhook.notifier import WebhookNotifier
from afs_webhook.schema import SCHEMA, load_schema
from afs_webhook.signing import WebhookVerificationError, new_secret, verify

__all__ = ["SCHEMA", "WebhookNotifier", "WebhookVerificationError", "load_schema", "new_secret", "verify"]
