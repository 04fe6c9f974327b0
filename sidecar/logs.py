"""Logs: one JSON object per line, secrets redacted.

Redaction is a choke point, applied twice: ``RedactingFilter`` rewrites every record a handler
receives (message with its args, exception text, string extras), so other handlers sharing the
record see it redacted too; and ``JsonFormatter.format`` redacts the final line again, so no
path through ``logging`` (a formatter subclass, a late ``exc_info``) can bypass it. What is
redacted: every secret registered with ``register_secrets`` (Stigg API key, webhook secret,
auth token, Redis URL and its password), and the values of ``Authorization``, ``X-API-KEY`` and
``Stigg-Webhooks-Secret`` headers, whatever their value.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from sidecar.config import Secret

MASK = "***"
# A header name, its separator (quoted or not, JSON-escaped or not), an optional scheme, value.
_HEADER_VALUE = re.compile(
    r"(?i)(authorization|x-api-key|stigg-webhooks-secret)"
    r"((?:\\?[\"'])?\s*[:=,]\s*(?:\\?[\"'])?\s*)"
    r"(?:(bearer|basic|token)\s+)?"
    r"[^\s\"'\\,;}\]]+"
)
# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class _Redactor:
    """Replaces registered secrets (raw and JSON-escaped) and header values with ``***``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, *values: Secret | str | None) -> None:
        with self._lock:
            for value in values:
                text = value.reveal() if isinstance(value, Secret) else value
                if not text:
                    continue
                self._secrets.add(text)
                self._secrets.add(orjson.dumps(text).decode()[1:-1])
                password = _url_password(text)
                if password:
                    self._secrets.add(password)
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return _HEADER_VALUE.sub(_mask_header, text)


def _mask_header(match: re.Match[str]) -> str:
    scheme = match.group(3)
    return match.group(1) + match.group(2) + (f"{scheme} " if scheme else "") + MASK


def _url_password(text: str) -> str | None:
    if "://" not in text:
        return None
    try:
        return urlsplit(text).password
    except ValueError:
        return None


redact = _Redactor()


def register_secrets(*values: Secret | str | None) -> None:
    """Never log these (add-only: a process may run several apps, e.g. in tests)."""
    redact.register(*values)


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so no handler sees a secret (install it on every handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message and the extras (the access
    log's request id and route among them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = orjson.dumps(entry, default=str).decode()
        return redact(line)  # the last word: whatever reached this line, no secret leaves


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing redacted JSON lines to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    return handler


def configure(level: str) -> None:
    """Route all logging (the sidecar's and its libraries') through one JSON handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(json_handler())
    root.setLevel(level)
    # httpx logs every request at INFO: far too much for a sidecar on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
