"""``EmailNotifier``: sends events as email reports over SMTP.

This release registers the channel and reads its settings; building and sending
the messages (STARTTLS/TLS, HTML report, batching) comes next, so ``deliver``
fails with a permanent, clearly worded error until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from afs_core import Channel, PermanentDeliveryError
from afs_core.config import env_float, env_int, env_list, load_env


class EmailNotifier(Channel):
    """SMTP channel. Settings: ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER``,
    ``SMTP_PASSWORD``, ``FROM_EMAIL``, ``TO_EMAILS`` (comma-separated)."""

    name = "email"

    def __init__(
        self,
        smtp_host: str | None = None,
        smtp_port: int | None = None,
        smtp_user: str | None = None,
        smtp_password: str | None = None,
        from_email: str | None = None,
        to_emails: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        env: Mapping[str, str] = load_env() if smtp_host is None else {}
        self.smtp_host = smtp_host or env.get("SMTP_HOST") or None
        self.smtp_port = smtp_port if smtp_port is not None else env_int(env, "SMTP_PORT", 587, minimum=1)
        self.smtp_user = smtp_user or env.get("SMTP_USER") or None
        self._smtp_password = smtp_password or env.get("SMTP_PASSWORD") or None
        self.from_email = from_email or env.get("FROM_EMAIL") or self.smtp_user
        self.to_emails = list(to_emails) if to_emails is not None else env_list(env, "TO_EMAILS")
        self.timeout = float(timeout) if timeout is not None else env_float(env, "SMTP_TIMEOUT", 10.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmailNotifier | None:
        host = env.get("SMTP_HOST", "").strip()
        if not host:
            return None
        return cls(
            smtp_host=host,
            smtp_port=env_int(env, "SMTP_PORT", 587, minimum=1),
            smtp_user=env.get("SMTP_USER") or None,
            smtp_password=env.get("SMTP_PASSWORD") or None,
            from_email=env.get("FROM_EMAIL") or None,
            to_emails=env_list(env, "TO_EMAILS"),
            timeout=env_float(env, "SMTP_TIMEOUT", 10.0),
        )

    def is_configured(self) -> bool:
        return bool(self.smtp_host and self.from_email and self.to_emails)

    def deliver(self, message: Any) -> None:
        raise PermanentDeliveryError("afs-email 0.1.0 cannot send email yet; delivery is not built")

    def describe(self) -> str:
        if not self.smtp_host:
            return "email (not configured)"
        login = f"{self.smtp_user}@" if self.smtp_user else ""
        return f"email smtp://{login}{self.smtp_host}:{self.smtp_port} -> {', '.join(self.to_emails)}"

    def secrets(self) -> Iterable[str]:
        return [self._smtp_password] if self._smtp_password else []
