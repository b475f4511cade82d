"""Keeps secrets out of logs, errors and API output.

Every secret the configuration holds (passwords, password files' contents, passwords inside DSNs and
URLs) is registered once at start; ``scrub`` replaces any of them wherever they appear, so a driver's
error message that quotes a connection string cannot leak one. DSNs and URLs shown to users are
additionally rewritten with their password masked.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
# Shorter secrets would mask ordinary text everywhere; passwords that short are not worth hiding.
MIN_SECRET_LENGTH = 3
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:\\.|[^'\\])*'|\S+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)([^@/?#\s]*)(@)")
_UNENCODED_DELIMITERS = re.compile(r"[@/?#]")


class Redactor:
    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, secrets: Iterable[str | None]) -> None:
        fresh = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        with self._lock:
            self._secrets = self._secrets | fresh

    def scrub(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_connection_strings(text)


REDACTOR = Redactor()


def mask_connection_strings(text: str) -> str:
    """Masks ``password=...`` pairs and the password of ``scheme://user:password@host`` URLs."""
    text = _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _URL_USERINFO.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def passwords_in(connection: str) -> Iterator[str]:
    """The passwords a DSN or URL carries, in both their raw and URL-decoded spellings."""
    for match in _KEYWORD_PASSWORD.finditer(connection):
        value = match.group(2)
        yield value
        if value.startswith("'"):
            yield value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    if "://" in connection:
        parts = urlsplit(connection)
        userinfo, at, _ = parts.netloc.rpartition("@")
        if not at:
            # A "/", "?" or "#" left unencoded in the password ends the host part before its "@":
            # the user information then runs to the URL's last "@".
            userinfo = connection.partition("://")[2].rpartition("@")[0]
        if ":" in userinfo:
            raw = userinfo.partition(":")[2]
            yield raw
            yield unquote(raw)
            # Parsers cut such a password at its first unencoded @ / ? # and show the rest as a host,
            # port or path (libpq reads u:p@ss@db as host ss@db): each piece is a secret of its own.
            yield from _UNENCODED_DELIMITERS.split(raw)
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password":
                yield value


class ScrubbingFilter(logging.Filter):
    """Renders each record once and scrubs the result, arguments and traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR.scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = REDACTOR.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
