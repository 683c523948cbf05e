"""Keep the secrets the gateway holds out of its logs.

Upstream errors are never relayed as text (:mod:`gateway.backends.upstream_errors`), but a
log line can still carry one: an exception message from a library that quotes a URL with
credentials or a header, a traceback. :class:`SecretScrubber` knows every secret value this
process holds — the admin key and the value of every environment variable the policy names as
``api_key_env`` — plus the shapes of bearer tokens and API keys, and replaces them with
``[redacted]``. :func:`install_log_scrubbing` puts it on every handler of the root and uvicorn
loggers, so whatever formats a record (message, arguments, traceback) sees only scrubbed text.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable

from policies.schema import Policy

REDACTED = "[redacted]"
# Bearer credentials and the usual API-key shapes (ours are sk-slmgw-..., OpenAI's sk-...).
_PATTERNS = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{4,}|\bsk-[A-Za-z0-9_-]{6,}")
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class SecretScrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def for_policy(cls, policy: Policy, admin_key: str | None, environ: dict[str, str] | None = None) -> SecretScrubber:
        env = os.environ if environ is None else environ
        names = {getattr(backend, "api_key_env", None) for backend in policy.backends.values()}
        values = [env.get(name, "") for name in names if name]
        return cls([*values, *([admin_key] if admin_key else [])])

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _PATTERNS.sub(REDACTED, text)


class ScrubbingFilter(logging.Filter):
    """Formats a record's message (and traceback) once, scrubbed, before any handler does."""

    def __init__(self, scrubber: SecretScrubber) -> None:
        super().__init__("slm-gateway-secrets")
        self.scrubber = scrubber
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_slmgw_scrubbed", False):
            return True
        # Scrub the parts rather than the formatted message: formatters such as uvicorn's access
        # log read record.args themselves. Anything not a plain number is made scrubbed text.
        if isinstance(record.msg, str):
            record.msg = self.scrubber.scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._arg(value) for key, value in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.scrubber.scrub(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.scrubber.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrubber.scrub(record.stack_info)
        record._slmgw_scrubbed = True
        return True

    def _arg(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.scrubber.scrub(str(value))


def install_log_scrubbing(scrubber: SecretScrubber) -> Callable[[], None]:
    """Add the filter to every handler of the root and uvicorn loggers; returns its undo."""
    log_filter = ScrubbingFilter(scrubber)
    handlers = {handler for name in _LOGGERS for handler in logging.getLogger(name).handlers}
    if logging.lastResort is not None:  # what prints when a process configured no handler
        handlers.add(logging.lastResort)
    for handler in handlers:
        handler.addFilter(log_filter)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(log_filter)

    return remove
