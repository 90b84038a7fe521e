"""One event, several recipients: each gets it once, whatever fails and is retried.

A channel that sends one event as a request per recipient (several chats, phone
numbers or URLs) cannot let the engine retry the whole event when one recipient
failed: the others would get it twice. :func:`deliver_to_each` remembers, in the
channel's memory (the store, when the engine runs it), who has it and who refused
it for good, so a retry, even by another process, goes only to those left.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from afs_core.channels.base import Channel
from afs_core.channels.webhook import json_object
from afs_core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from afs_core.redaction import scrub


def deliver_to_each(
    channel: Channel, key: str, targets: Sequence[str], send: Callable[[str], Any],
    *, label: Callable[[str], str] = str,
) -> dict[str, Any]:
    """Call ``send(target)`` for each target that has not had message ``key`` yet.

    Returns the receipts by target once every target has it. Raises
    :class:`TransientDeliveryError` while some target may still take it (the retry
    sends only to those), and :class:`PermanentDeliveryError` when the rest refused it
    for good; both name each failed target (by ``label``) and its reason. ``send``
    raises :class:`DeliveryError` for a failure; anything else it raises ends this
    call as it would a plain ``deliver``. Targets and reasons are kept in the store
    (reasons with the channel's secrets masked): pass a key, such as a keyed hash, for
    a target that is itself a secret.
    """
    memory_key = f"fanout:{key}"
    kept = json_object(channel.memory.get(memory_key)) if len(targets) > 1 else {}
    done: list[str] = list(kept.get("done", []))
    refused: dict[str, str] = dict(kept.get("refused", {}))
    receipts: dict[str, Any] = {}
    secrets = [s for s in channel.secrets() if isinstance(s, str)]
    waiting: dict[str, TransientDeliveryError] = {}
    for target in targets:
        if target in done or target in refused:
            continue
        try:
            receipts[target] = send(target)
        except DeliveryError as exc:
            if len(targets) == 1:
                raise
            reason = scrub(exc.reason, secrets)  # kept in the store, and quoted
            if exc.permanent:
                refused[target] = reason
            else:
                waiting[target] = TransientDeliveryError(reason, retry_after=exc.retry_after)
            continue
        finally:
            if len(targets) > 1 and (target in receipts or target in refused):
                if target in receipts:
                    done.append(target)
                channel.memory.set(memory_key, json.dumps({"done": done, "refused": refused}))
    many = len(targets) > 1  # one target: nothing was kept (its retry is the whole event's)
    if not waiting and not refused:
        if many:
            channel.memory.set(memory_key, None)
        return receipts
    failures = {**refused, **{target: exc.reason for target, exc in waiting.items()}}
    said = "; ".join(f"{label(target)}: {reason}" for target, reason in failures.items())
    got = f" (sent to {len(done)} of {len(targets)})" if done else ""
    if waiting:
        hints = [exc.retry_after for exc in waiting.values() if exc.retry_after is not None]
        raise TransientDeliveryError(f"{said}{got}", retry_after=max(hints) if hints else None)
    if many:
        channel.memory.set(memory_key, None)
    raise PermanentDeliveryError(f"{said}{got}")

