"""NITRO failures: HTTP status, NetScaler errorcode and message, and the ones the rules raise most."""

from __future__ import annotations

from typing import Any


class NitroError(Exception):
    """A NITRO failure: HTTP status, NetScaler errorcode and message, as the appliance reports them."""

    def __init__(self, status: int, errorcode: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errorcode = errorcode
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"errorcode": self.errorcode, "message": self.message, "severity": "ERROR"}


def not_found(field: str, value: Any) -> NitroError:
    return NitroError(404, 258, f"No such resource [{field}, {value}]")


def already_exists() -> NitroError:
    return NitroError(409, 273, "Resource already exists")


def invalid_argument(field: str) -> NitroError:
    return NitroError(599, 278, f"Invalid argument [{field}]")


def argument_missing(field: str) -> NitroError:
    return NitroError(599, 1095, f"Required argument missing [{field}]")


def bad_value(field: str, value: Any) -> NitroError:
    return NitroError(599, 1097, f"Invalid argument value [{field}, {value}]")
