"""Typed errors of the NITRO client: transport failures apart from API errors, grouped by errorcode.

The tree::

    NitroError
    ├── NitroTransportError          connection refused/reset/dropped (cause chained)
    │   └── NitroTimeoutError        also an asyncio.TimeoutError
    └── NitroApiError                NetScaler answered with an error (status, errorcode, message, severity)
        ├── NitroNotFound            258, 344, 351, 461-463, 2171
        ├── NitroAlreadyExists       273, 1335, 1468, 2133
        ├── NitroInvalidArgument     278, 1074, 1075, 1090-1111, 1232-1240
        ├── NitroNotAuthorized       257, 269, 2138, and HTTP 403
        ├── NitroAuthenticationFailed 354, 355, 1244
        ├── NitroSessionExpired      444, 1027, 1026, 352, 471
        ├── NitroInUse               315, 1070
        ├── NitroNotBound            1303, 2170
        ├── NitroTypeMismatch        1304
        └── NitroServerError         HTTP 5xx other than 599, or a body that is not NITRO JSON

Callers match on classes (or on ``errorcode``), never on message text. Messages are taken from the
response as the device wrote them, trimmed, and scrubbed of any secret the caller names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: Longest body excerpt kept in an error built from a non-JSON response.
MAX_BODY_CHARS = 256

#: Longest message kept from a NITRO JSON error body.
MAX_MESSAGE_CHARS = 1024

#: HTTP status NetScaler uses for its own (validation) errors; never transient.
NETSCALER_ERROR_STATUS = 599

REDACTED = "***"


class NitroError(Exception):
    """Base of every error raised by the NITRO client."""


class NitroTransportError(NitroError):
    """The request did not produce an HTTP response: connection refused, reset or dropped.

    The underlying aiohttp/OS error is chained as ``__cause__``.
    """


class NitroTimeoutError(NitroTransportError, asyncio.TimeoutError):
    """The request timed out (connect or total timeout); also an ``asyncio.TimeoutError``."""


class NitroApiError(NitroError):
    """NetScaler answered with an error.

    ``status`` is the HTTP status (207 for one item of a bulk request), ``errorcode`` the NITRO
    errorcode (0 when the body carried none), ``message`` and ``severity`` as sent by the device.
    """

    def __init__(self, status: int, errorcode: int, message: str, severity: str = "ERROR") -> None:
        super().__init__(status, errorcode, message, severity)
        self.status = status
        self.errorcode = errorcode
        self.message = message
        self.severity = severity

    def __str__(self) -> str:
        return f"errorcode {self.errorcode}: {self.message} (HTTP {self.status})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, errorcode={self.errorcode!r}, "
            f"message={self.message!r}, severity={self.severity!r})"
        )


class NitroNotFound(NitroApiError):
    """The named object (or its parent in a binding) does not exist."""


class NitroAlreadyExists(NitroApiError):
    """The object or binding exists already."""


class NitroInvalidArgument(NitroApiError):
    """The request was rejected by validation: bad name, value, argument or JSON."""


class NitroNotAuthorized(NitroApiError):
    """The user may not run this command."""


class NitroAuthenticationFailed(NitroApiError):
    """Login refused: unknown user, wrong password, or basic authentication disabled."""


class NitroSessionExpired(NitroApiError):
    """The session expired, was killed, or never existed; a new login is needed."""


class NitroInUse(NitroApiError):
    """The object is referenced by another and cannot be removed."""


class NitroNotBound(NitroApiError):
    """The binding to remove does not exist."""


class NitroTypeMismatch(NitroApiError):
    """Service type of the service and the vserver differ."""


class NitroServerError(NitroApiError):
    """A server-side failure (HTTP 5xx other than 599) or a response that is not NITRO JSON."""


def _codes(*items: int | range) -> frozenset[int]:
    codes: set[int] = set()
    for item in items:
        codes.update(item if isinstance(item, range) else (item,))
    return frozenset(codes)


#: errorcode groups, checked in this order.
ERRORCODE_GROUPS: tuple[tuple[frozenset[int], type[NitroApiError]], ...] = (
    (_codes(258, 344, 351, 461, 462, 463, 2171), NitroNotFound),
    (_codes(273, 1335, 1468, 2133), NitroAlreadyExists),
    (_codes(278, 1074, 1075, range(1090, 1112), range(1232, 1241)), NitroInvalidArgument),
    (_codes(257, 269, 2138), NitroNotAuthorized),
    (_codes(354, 355, 1244), NitroAuthenticationFailed),
    (_codes(444, 1027, 1026, 352, 471), NitroSessionExpired),
    (_codes(315, 1070), NitroInUse),
    (_codes(1303, 2170), NitroNotBound),
    (_codes(1304), NitroTypeMismatch),
)


def error_class(status: int, errorcode: int) -> type[NitroApiError]:
    """The error class for an HTTP status and NITRO errorcode.

    Transient server failures (5xx other than 599) win over the errorcode, so that the class agrees
    with the client's retry rule; then the errorcode group; then HTTP 403.
    """
    if status >= 500 and status != NETSCALER_ERROR_STATUS:
        return NitroServerError
    for codes, cls in ERRORCODE_GROUPS:
        if errorcode in codes:
            return cls
    if status == 403:
        return NitroNotAuthorized
    return NitroApiError


def _scrub(text: str, redact: Iterable[str]) -> str:
    for secret in redact:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def parse_errorcode(value: Any) -> int | None:
    """A NITRO errorcode as ``int`` (it may arrive as a number or a string); ``None`` if absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def error_from_response(
    status: int,
    body: Mapping[str, Any] | str | bytes | None,
    *,
    redact: Iterable[str] = (),
) -> NitroApiError:
    """Build the typed error for an error response.

    ``body`` is the parsed JSON object, or the raw text/bytes (parsed here when it is JSON). A body
    that is not a NITRO JSON object yields a ``NitroServerError`` whose message is the body trimmed
    to ``MAX_BODY_CHARS``. Every string in ``redact`` is replaced by ``***`` in the message.
    """
    redact = tuple(redact)
    parsed: Any = body
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = text
    if isinstance(parsed, Mapping):
        errorcode = parse_errorcode(parsed.get("errorcode"))
        if errorcode is not None:
            message = _scrub(str(parsed.get("message", "")), redact)[:MAX_MESSAGE_CHARS]
            severity = str(parsed.get("severity", "ERROR"))
            return error_class(status, errorcode)(status, errorcode, message, severity)
        parsed = json.dumps(parsed)
    if parsed is None:
        excerpt = "(empty body)"
    else:
        excerpt = _scrub(str(parsed), redact)[:MAX_BODY_CHARS]
    cls = error_class(status, 0)
    if cls is NitroApiError:  # not NITRO speaking (a proxy page, a crash): a server-side failure
        cls = NitroServerError
    return cls(status, 0, excerpt, "ERROR")
