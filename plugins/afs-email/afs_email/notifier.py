"""``EmailNotifier``: sends events as email reports over SMTP (standard library only).

Rendering lives in :mod:`afs_email.report`; this module validates the settings,
speaks SMTP with TLS that fails closed, holds every send to a total deadline,
keeps one connection and one login for a batch, and turns SMTP replies into
typed delivery errors.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core import Channel, ConfigurationError, PermanentDeliveryError, SendsDirectly, TransientDeliveryError
from afs_core.channels import Setting, seconds, text_list, whole_number
from afs_core.config import check_timeout
from afs_core.errors import DeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import one_line, strip_control
from afs_core.redaction import Secret

if TYPE_CHECKING:  # smtplib, ssl and socket load on the first send: start-up stays fast
    import smtplib
    import ssl
    from email.message import EmailMessage

    from afs_core.channels.deadline import Deadline
    from afs_email.report import EmailReport  # rendering loads with the first event rendered

DEFAULT_TIMEOUT = 10.0
TLS_MODES = ("starttls", "implicit", "off")
_APP_PASSWORD_HINT = (
    "check SMTP_USER and SMTP_PASSWORD; Gmail, Outlook and iCloud need an app password, "
    "not the account password"
)


class PartialDeliveryError(PermanentDeliveryError):
    """The server accepted the message for some recipients and refused others."""

    def __init__(self, reason: str, refused: Mapping[str, str]) -> None:
        super().__init__(reason)
        self.refused = dict(refused)


def _address(value: str, setting: str) -> str:
    from email.headerregistry import Address

    text = value.strip()
    if not text or any(ch in text for ch in "\r\n,;<>"):
        raise ConfigurationError(f"{setting} must be plain email addresses, got {text!r}")
    try:
        Address(addr_spec=text)
    except Exception as exc:  # ValueError, IndexError, email.errors.HeaderParseError
        raise ConfigurationError(f"{setting}: {text!r} is not an email address ({exc})") from None
    if "@" not in text:
        raise ConfigurationError(f"{setting}: {text!r} is not an email address")
    return text


def _reply(exc: Any) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return one_line(text, 200)


class _Batch:
    """One open connection shared by the sends of a batch."""

    def __init__(self) -> None:
        self.smtp: smtplib.SMTP | None = None
        self.opened = 0
        self.reconnects = 0
        self.fatal: DeliveryError | None = None


class EmailNotifier(SendsDirectly, Channel):
    """SMTP channel. Settings: ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_USER``,
    ``SMTP_PASSWORD``, ``FROM_EMAIL``, ``TO_EMAILS`` (comma-separated),
    ``SMTP_TIMEOUT`` (total seconds per send), ``SMTP_TLS`` (``starttls``,
    ``implicit`` or ``off``; default from the port), ``SMTP_CA_FILE``."""

    name = "email"
    settings = (
        Setting("SMTP_HOST", "smtp_host", required=True),
        Setting("SMTP_PORT", "smtp_port", parse=whole_number),
        Setting("SMTP_USER", "smtp_user", configures=True),
        Setting("SMTP_PASSWORD", "smtp_password", secret=True, configures=True),
        Setting("FROM_EMAIL", "from_email", configures=True),
        Setting("TO_EMAILS", "to_emails", parse=text_list, configures=True),
        Setting("SMTP_TIMEOUT", "timeout", parse=seconds),
        Setting("SMTP_TLS", "tls"),
        Setting("SMTP_CA_FILE", "ca_file"),
    )
    # The sender and recipients are checked by the constructor (FROM_EMAIL may be SMTP_USER).
    required_settings = ("SMTP_HOST", "FROM_EMAIL", "TO_EMAILS")

    def __init__(
        self,
        smtp_host: str | None = None,
        smtp_port: int | None = None,
        smtp_user: str | None = None,
        smtp_password: str | None = None,
        from_email: str | None = None,
        to_emails: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        tls: str | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if smtp_host is None:  # EmailNotifier(), as before: from .env and the environment
            given = self.settings_from_env({
                "smtp_port": smtp_port, "smtp_user": smtp_user, "smtp_password": smtp_password,
                "from_email": from_email, "to_emails": to_emails, "timeout": timeout, "tls": tls, "ca_file": ca_file})
            smtp_host, smtp_port, smtp_user = given["smtp_host"], given.get("smtp_port"), given.get("smtp_user")
            smtp_password, from_email = given.get("smtp_password"), given.get("from_email")
            to_emails = given.get("to_emails")
            timeout, tls, ca_file = given.get("timeout"), given.get("tls"), given.get("ca_file")
        if not isinstance(smtp_host, str) or not smtp_host.strip() or any(c in smtp_host for c in " \r\n/"):
            raise ConfigurationError(f"SMTP_HOST must be a host name, got {smtp_host!r}")
        self.smtp_host = smtp_host.strip()
        self.smtp_port = 587 if smtp_port is None else int(smtp_port)
        if not 0 < self.smtp_port < 65536:
            raise ConfigurationError(f"SMTP_PORT must be 1-65535, got {smtp_port!r}")
        if bool(smtp_user) != bool(smtp_password):
            raise ConfigurationError("SMTP_USER and SMTP_PASSWORD go together: set both, or neither for a relay")
        if smtp_password and not smtp_password.isascii():
            # smtplib sends AUTH as ASCII: such a password could never log in.
            raise ConfigurationError("SMTP_PASSWORD has non-ASCII characters, which SMTP AUTH cannot send")
        self.smtp_user = smtp_user
        self.smtp_password = Secret(smtp_password) if smtp_password else None
        sender = from_email or smtp_user
        if not sender:
            raise ConfigurationError("FROM_EMAIL is not set (and there is no SMTP_USER to send as)")
        self.from_email = _address(sender, "FROM_EMAIL")
        self.to_emails = [_address(a, "TO_EMAILS") for a in (to_emails or [])]
        if not self.to_emails:
            raise ConfigurationError("TO_EMAILS must list at least one recipient")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else check_timeout(timeout, "SMTP_TIMEOUT")
        mode = (tls or ("implicit" if self.smtp_port == 465 else "starttls")).strip().lower()
        if mode not in TLS_MODES:
            raise ConfigurationError(f"SMTP_TLS must be one of {', '.join(TLS_MODES)}, got {tls!r}")
        self.tls = mode
        if ca_file is not None and ssl_context is None:
            import ssl

            try:
                ssl_context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"SMTP_CA_FILE {ca_file!r} cannot be used: {exc}") from None
        self._ssl_context = ssl_context
        self._local = threading.local()

    # -- rendering --------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> EmailReport:
        from afs_email.report import render

        return render(event)

    def _message(self, message: Any) -> EmailMessage:
        from email.message import EmailMessage

        from afs_email.report import EmailReport, build_message, header_safe

        if isinstance(message, EmailMessage):
            return message
        if isinstance(message, EmailReport):
            report = dataclasses.replace(message, subject=header_safe(message.subject)[:200] or "[AFS] notification",
                                  text=strip_control(message.text), html=strip_control(message.html))
        else:  # a plugin's formatter returned text: send it as it is, escaped in the HTML part
            import html

            text = strip_control(str(message))
            first = text.strip().splitlines()[0] if text.strip() else "notification"
            report = EmailReport(f"[AFS] {header_safe(first)}"[:200], text, f"<pre>{html.escape(text)}</pre>")
        return build_message(report, self.from_email, self.to_emails)

    # -- sending ----------------------------------------------------------------------

    def deliver(self, message: Any) -> None:
        import smtplib

        from afs_core.channels.deadline import Deadline

        email_message = self._message(message)
        batch: _Batch | None = getattr(self._local, "batch", None)
        with Deadline(self.timeout) as deadline:
            try:
                if batch is None:
                    smtp = self._open(deadline)
                    try:
                        self._transmit(smtp, email_message)
                    finally:
                        self._quit(smtp)
                    return
                if batch.smtp is None:
                    batch.smtp = self._reopen(batch, deadline)
                else:
                    deadline.attach(batch.smtp)
                try:
                    self._transmit(batch.smtp, email_message)
                except smtplib.SMTPServerDisconnected:
                    if deadline.expired:
                        raise
                    batch.smtp = None  # the server dropped us midway
                    batch.smtp = self._reopen(batch, deadline)
                    self._transmit(batch.smtp, email_message)
            except Exception as exc:
                if batch is not None and batch.smtp is not None and not _still_usable(exc):
                    self._quit(batch.smtp)
                    batch.smtp = None
                raise self._classify(exc, deadline) from None

    batch_size = 20  # the engine hands over up to this many due messages at once

    def deliver_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Each message its own email, over one connection with one login (and at most
        one reconnect when the server drops it midway)."""
        self._local.batch = batch = _Batch()
        results: list[Any] = []
        try:
            for message in messages:
                try:
                    results.append(self.deliver(message))
                except Exception as exc:  # classified by the core, as from deliver()
                    results.append(exc)
        finally:
            self._local.batch = None
            if batch.smtp is not None:
                from afs_core.channels.deadline import Deadline

                with Deadline(min(self.timeout, 5.0)) as deadline:
                    deadline.attach(batch.smtp)
                    self._quit(batch.smtp)
        return results

    def _reopen(self, batch: _Batch, deadline: Deadline) -> smtplib.SMTP:
        """The batch's connection: the first one, then at most one more."""
        if batch.fatal is not None:
            raise batch.fatal  # a login that failed for good fails the same for the rest
        if batch.opened >= 1:
            if batch.reconnects >= 1:
                raise TransientDeliveryError(
                    "the SMTP server dropped the batch's connection twice; the rest stays unsent")
            batch.reconnects += 1
        batch.opened += 1
        try:
            return self._open(deadline)
        except Exception as exc:
            error = self._classify(exc, deadline)
            if error.permanent:
                batch.fatal = error
            raise error from None

    def _context(self) -> ssl.SSLContext:
        import ssl

        return self._ssl_context or ssl.create_default_context()

    def _open(self, deadline: Deadline) -> smtplib.SMTP:
        """Connected, secured and logged in, or an exception; credentials only over TLS."""
        import smtplib

        if self.tls == "implicit":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(timeout=deadline.remaining(), context=self._context())
        else:
            smtp = smtplib.SMTP(timeout=deadline.remaining())
        # Built without a host so the deadline watches the socket from the first byte;
        # smtplib then verifies the certificate against _host, which only its
        # constructor sets.
        smtp._host = self.smtp_host  # type: ignore[attr-defined]
        deadline.attach(smtp)
        try:
            smtp.connect(self.smtp_host, self.smtp_port)
            deadline.attach(smtp)  # now there is a socket to watch
            self._in_time(deadline)
            smtp.ehlo()
            if self.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise PermanentDeliveryError(
                        "the server offers no STARTTLS, so nothing was sent and no credentials either "
                        "(SMTP_TLS=off allows plain SMTP, for a local relay only)"
                    )
                smtp.starttls(context=self._context())
                deadline.attach(smtp)
                self._in_time(deadline)
                smtp.ehlo()
            if self.smtp_user and self.smtp_password:
                self._login(smtp)
            self._in_time(deadline)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        """One AUTH attempt with the best mechanism offered: smtplib's login() tries each
        in turn, and repeated failures can lock an account."""
        import smtplib

        offered = (smtp.esmtp_features.get("auth") or "").upper().split()
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            if mechanism in offered:
                break
        else:
            raise smtplib.SMTPNotSupportedError("the server offers no AUTH mechanism this client speaks")
        smtp.user, smtp.password = self.smtp_user, self.smtp_password.reveal()  # type: ignore[union-attr]
        method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login, "CRAM-MD5": smtp.auth_cram_md5}[mechanism]
        try:
            smtp.auth(mechanism, method, initial_response_ok=mechanism != "CRAM-MD5")
        finally:
            smtp.password = ""

    @staticmethod
    def _in_time(deadline: Deadline) -> None:
        import smtplib

        if deadline.expired:
            raise smtplib.SMTPServerDisconnected("deadline passed")  # reported as the deadline

    def _transmit(self, smtp: smtplib.SMTP, message: EmailMessage) -> None:
        refused = smtp.send_message(message, from_addr=self.from_email, to_addrs=self.to_emails)
        if refused:
            named = {addr: f"{code} {one_line(text.decode('utf-8', 'replace'), 100)}"
                     for addr, (code, text) in refused.items()}
            raise PartialDeliveryError(
                f"delivered to {len(self.to_emails) - len(named)} of {len(self.to_emails)} recipients; refused: "
                + ", ".join(f"{addr} ({why})" for addr, why in named.items()),
                refused=named,
            )

    @staticmethod
    def _quit(smtp: smtplib.SMTP) -> None:
        import smtplib

        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def _classify(self, exc: BaseException, deadline: Deadline) -> DeliveryError:
        import smtplib
        import ssl

        if isinstance(exc, DeliveryError):
            return exc
        if deadline.expired:
            return TransientDeliveryError(f"the SMTP exchange did not finish within the {self.timeout:g} s deadline")
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            if 400 <= exc.smtp_code < 500:  # 454: the server's trouble, not the password
                return TransientDeliveryError(f"SMTP authentication failed for now ({exc.smtp_code} {_reply(exc)})")
            return PermanentDeliveryError(
                f"SMTP authentication failed ({exc.smtp_code} {_reply(exc)}): {_APP_PASSWORD_HINT}")
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            refused = ", ".join(f"{addr} ({code})" for addr, (code, _) in exc.recipients.items())
            if all(400 <= code < 500 for code, _ in exc.recipients.values()):  # greylisting, full mailbox
                return TransientDeliveryError(f"every recipient was deferred: {refused}")
            return PermanentDeliveryError(f"every recipient was refused: {refused}")
        if isinstance(exc, smtplib.SMTPResponseException):
            what = f"SMTP {exc.smtp_code} {_reply(exc)}"
            kind = TransientDeliveryError if 400 <= exc.smtp_code < 500 else PermanentDeliveryError
            return kind(what)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return PermanentDeliveryError(f"the server does not support what is needed: {exc}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentDeliveryError(f"the server's TLS certificate failed verification: {exc.verify_message}")
        if isinstance(exc, ssl.SSLError):  # e.g. implicit TLS against a plain port
            return PermanentDeliveryError(f"TLS failed ({exc.reason or exc}): check SMTP_PORT and SMTP_TLS")
        if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
            return TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}: {exc}")
        return PermanentDeliveryError(f"{type(exc).__name__}: {exc}")

    # -- status -----------------------------------------------------------------------

    def is_configured(self) -> bool:
        return bool(self.smtp_host and self.from_email and self.to_emails)

    def describe(self) -> str:
        login = f"{self.smtp_user}@" if self.smtp_user else ""
        return f"email smtp://{login}{self.smtp_host}:{self.smtp_port} ({self.tls}) -> {', '.join(self.to_emails)}"


def _still_usable(exc: BaseException) -> bool:
    """A refused message leaves the connection open; anything else may have broken it."""
    import smtplib

    return isinstance(exc, (PartialDeliveryError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
                            smtplib.SMTPDataError))
