"""Keeping credentials out of everything the programs print: logs, errors, `pawtrait doctor`.

Credentials live in a few variables (the Discord token, S3 keys) and in the database URL,
either as `user:password@` or as libpq's `?password=` (which SQLAlchemy's
`render_as_string(hide_password=True)` leaves in). `scrub` masks them in any text;
`scrub_logs` does it for every log record, so an exception that quotes a URL or a driver's
error never writes a credential into a log file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

from config.database_url import MASK, DatabaseUrl

SECRET_VARIABLES = ("DISCORD_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words all over the text

# user:password@ in any URL (to the last '@' of the word: passwords may hold '@' or '/'),
# and password=... in a query string or a libpq keyword string.
_USERINFO = re.compile(r"(://[^/@:\s]*:)\S*@")
_PASSWORD_PARAMETER = re.compile(r"(\b(?:ssl)?password=)[^&\s'\"]*", re.IGNORECASE)


def known_secrets(env: Mapping[str, str]) -> list[str]:
    """The credentials in this environment: secret variables and the passwords in URLs."""
    found = [env[name] for name in SECRET_VARIABLES if env.get(name)]
    found += _database_passwords(env.get("PAWTRAIT_DATABASE_URL")) + _files_passwords(env.get("PAWTRAIT_FILES_URL"))
    found += [form(secret) for secret in found for form in (unquote, lambda text: quote(text, safe=""))]
    return sorted({s for s in found if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def _database_passwords(raw: str | None) -> list[str]:
    try:
        return DatabaseUrl.parse(raw).passwords() if raw else []
    except ValueError:
        return []  # an unparseable URL is refused by the settings, naming its variable


def _files_passwords(raw: str | None) -> list[str]:
    """PAWTRAIT_FILES_URL may hold none (the settings refuse it), but one given anyway is masked too."""
    try:
        parts = urlsplit(raw or "")
        queried = [value for key, values in parse_qs(parts.query).items() if "password" in key.lower() for value in values]
        return [parts.password or "", *queried]
    except ValueError:
        return []


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets and any URL or query password replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(rf"\g<1>{MASK}@", text)
    return _PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", text)


class ScrubSecrets(logging.Filter):
    """Masks credentials in a record's message, exception and stack before any handler writes it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage(), self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


def scrub_logs(env: Mapping[str, str]) -> None:
    """Scrub every record the root logger's handlers write. A filter on the handlers, not on the
    logger: a logger's own filters never see the records its child loggers propagate."""
    scrubber = ScrubSecrets(known_secrets(env))
    for handler in logging.getLogger().handlers:
        for earlier in [f for f in handler.filters if isinstance(f, ScrubSecrets)]:
            handler.removeFilter(earlier)  # called again (tests run commands in one process): the newest secrets
        handler.addFilter(scrubber)
