"""The one logging setup of every vpp process, with secrets kept out of the logs.

Code never logs a secret on purpose: passwords are read from files and never formatted, URLs
are logged through :func:`redact_url` or as :attr:`MqttEndpoint.url` (no password), the API
logs paths without query strings and no request bodies, and uvicorn's access log is off.
:class:`RedactSecrets` is the net under that rule, on every handler of the root logger: it
rewrites, in each record's text and traceback,

* the password of any URL (``mqtt://user:pass@``, ``redis://:pass@``) to ``***``;
* an API token (``vpp_<key id>_<secret>``) to ``vpp_<key id>_***`` (the key id stays: it is
  what an operator quotes, see :mod:`cloud.registry.keys`), and a claim token
  (``vppclaim_<claim id>_<secret>``) likewise;
* a bearer credential (``Bearer <token>``) and a ``password=...``/``"password": ...`` value,
  as exceptions and validation errors print them (``password: <prose>`` is left alone: it is
  how an error names the field).

A password that appears bare in a message cannot be recognised; that is what the rule above
is for, and what ``tests/test_secrets_in_logs.py`` checks on a whole run.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

__all__ = [
    "LOG_FORMAT",
    "RedactSecrets",
    "configure_logging",
    "install_redaction",
    "redact",
    "redact_url",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"

_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)(@)")
_TOKEN = re.compile(r"\b(vpp(?:claim)?_[0-9a-f]{12}_)[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(\bBearer\s+)(?!\*\*\*)\S+", re.IGNORECASE)
_PASSWORD_VALUE = re.compile(
    r"""(\b\w*(?:password|passwd|secret)\w*(?:['"]\s*:|\s*=)\s*)(['"]?)(?!\*\*\*)[^\s'",}]+""",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed URL: redact by pattern
        return redact(url)
    if password is None:
        return url
    return url.replace(f":{password}@", f":{MASK}@", 1)


def redact(text: str) -> str:
    """``text`` with every secret this module recognises masked (see the module docstring)."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _TOKEN.sub(rf"\g<1>{MASK}", text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return _PASSWORD_VALUE.sub(rf"\g<1>\g<2>{MASK}", text)


class RedactSecrets(logging.Filter):
    """A handler filter that masks secrets in a record's message and traceback (never drops a
    record). On a handler, it sees every record the handler writes, from any logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr (the journal under systemd) at INFO with ``verbose``, else WARNING, with
    :class:`RedactSecrets` on every root handler. Call once at the start of a command."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)
    install_redaction()


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put :class:`RedactSecrets` on every handler of ``logger`` (the root logger) that lacks it."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
