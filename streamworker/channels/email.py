"""Email through SMTP (aiosmtplib): one connection per message, TLS or STARTTLS as set."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage

import aiosmtplib

from ..errors import PermanentError
from ..settings import Settings
from .errors import ChannelUnavailable, NotConfigured

__all__ = ["EmailChannel", "OutgoingEmail"]


class OutgoingEmail:
    __slots__ = ("body", "reference", "subject", "to")

    def __init__(self, *, to: str, subject: str, body: str, reference: str) -> None:
        self.to = to
        self.subject = subject
        self.body = body
        #: task id + scope: becomes the Message-ID, so a receiver can spot a duplicate.
        self.reference = reference


class EmailChannel:
    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise NotConfigured("email is not configured (set SMTP_HOST)")
        self._host = settings.smtp_host
        if settings.smtp_port is not None:
            self._port = settings.smtp_port
        else:
            self._port = 465 if settings.smtp_tls else 587
        self._username = settings.smtp_username
        self._password = settings.smtp_password
        self._sender = settings.smtp_from
        self._use_tls = settings.smtp_tls
        # None lets aiosmtplib use STARTTLS when the server offers it.
        self._start_tls = False if settings.smtp_tls else settings.smtp_starttls
        self._timeout = settings.http_timeout_seconds
        self._domain = self._sender.rpartition("@")[2] or "streamworker.local"

    def build(self, mail: OutgoingEmail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = f"<{mail.reference}@{self._domain}>"
        message["X-Streamworker-Reference"] = mail.reference
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(mail.body)
        return message

    async def send(self, mail: OutgoingEmail) -> None:
        try:
            await aiosmtplib.send(
                self.build(mail),
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._use_tls,
                start_tls=self._start_tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if codes and all(500 <= c < 600 for c in codes):
                raise PermanentError(f"SMTP server refused the recipient ({codes[0]})") from None
            raise ChannelUnavailable("SMTP server deferred the recipient") from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Bad credentials are a configuration fault: retrying (and opening the breaker)
            # lets the tasks wait until the operator fixes SMTP_USERNAME / SMTP_PASSWORD.
            raise ChannelUnavailable(f"SMTP authentication failed ({exc.code})") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentError(f"SMTP server rejected the message ({exc.code})") from None
            raise ChannelUnavailable(f"SMTP server answered {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ChannelUnavailable(f"SMTP server unreachable ({type(exc).__name__})") from None
