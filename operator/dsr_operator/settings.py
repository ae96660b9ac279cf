"""Settings, one root of small groups, from flags or environment (pydantic-settings).

Every field has a default and a unit in its name or description. Secrets are read from files
(mounted Kubernetes Secrets) or the environment, never from the command line.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from typing import Annotated

import pydantic
import pydantic_settings


class NitroSettings(pydantic_settings.BaseSettings):
    """How to reach NetScaler (env prefix DSR_NETSCALER_)."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix="DSR_NETSCALER_", extra="ignore", hide_input_in_errors=True  # a bad URL may hold a password
    )

    url: str = "http://127.0.0.1:9080"
    """NITRO base URL of a stand-alone NetScaler (or of one node of an HA pair)."""
    urls: list[str] = pydantic.Field(default_factory=list, max_length=2)
    """An HA pair's two NSIPs (JSON list in DSR_NETSCALER_URLS); when set, `url` is not used. The
    primary is found through `hanode/0` and is the only node written to."""
    username: str = "nsroot"
    username_file: pathlib.Path | None = None
    password: pydantic.SecretStr | None = None
    password_file: pathlib.Path | None = None
    ca_file: str | None = None
    verify_tls: bool = True
    timeout_seconds: float = 30.0
    max_concurrency: int = pydantic.Field(default=8, ge=1, le=64)
    retries: int = pydantic.Field(default=4, ge=0, le=20)

    @pydantic.field_validator("url")
    @classmethod
    def _url_plain(cls, value: str) -> str:
        return nitro_url(value)

    @pydantic.field_validator("urls")
    @classmethod
    def _urls_plain(cls, value: list[str]) -> list[str]:
        return [nitro_url(item) for item in value]

    def endpoints(self) -> list[str]:
        """The NITRO base URLs to talk to: the pair's NSIPs, else the one URL."""
        return list(self.urls) or [self.url]

    def credentials(self) -> tuple[str, str]:
        """(username, password) from files first, then the environment; the password is never logged."""
        username = self.username
        if self.username_file is not None:
            username = self.username_file.read_text().strip()
        if self.password_file is not None:
            return username, self.password_file.read_text().rstrip("\n")
        if self.password is not None:
            return username, self.password.get_secret_value()
        raise ValueError("no NetScaler password: set DSR_NETSCALER_PASSWORD_FILE or DSR_NETSCALER_PASSWORD")


def nitro_url(value: str) -> str:
    """A NITRO base URL: http(s)://host[:port], never with credentials in it (they would be logged and shown)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError("the NetScaler URL is not a URL: use http(s)://host[:port]") from None
    if "@" in parts.netloc:
        raise ValueError("the NetScaler URL must not carry credentials (user:password@host): give the user and "
                         "the password on their own (DSR_NETSCALER_USERNAME and DSR_NETSCALER_PASSWORD_FILE, "
                         "the chart's Secret; or --user and --password-file)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the NetScaler URL must be http(s)://host[:port]")
    return value


class EtcdSettings(pydantic_settings.BaseSettings):
    """How to reach the etcd service registry (env prefix DSR_ETCD_); unset endpoints: no registry."""

    model_config = pydantic_settings.SettingsConfigDict(env_prefix="DSR_ETCD_", extra="ignore",
                                                        hide_input_in_errors=True)

    endpoints: Annotated[list[str], pydantic_settings.NoDecode] = pydantic.Field(default_factory=list)
    """etcd client URLs, comma-separated in DSR_ETCD_ENDPOINTS, tried in order."""
    username: str | None = None
    username_file: pathlib.Path | None = None
    password: pydantic.SecretStr | None = None
    password_file: pathlib.Path | None = None
    ca_file: pathlib.Path | None = None
    """CA bundle that signed etcd's serving certificate (https endpoints)."""
    cert_file: pathlib.Path | None = None
    """Client certificate, for etcd's `--client-cert-auth`."""
    key_file: pathlib.Path | None = None
    """Every *_file that does not exist counts as not set: the chart mounts one Secret whose keys are
    each optional (`username`/`password`, `ca.crt`, `tls.crt`/`tls.key`)."""

    @pydantic.field_validator("endpoints", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @pydantic.field_validator("endpoints")
    @classmethod
    def _urls_plain(cls, value: list[str]) -> list[str]:
        for item in value:
            parts = urllib.parse.urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
                raise ValueError("etcd endpoints are http(s)://host:port URLs without credentials in them")
        return value

    @property
    def configured(self) -> bool:
        return bool(self.endpoints)

    def secret(self) -> str | None:
        """The password, from its file first; never logged."""
        if self.password_file is not None and self.password_file.exists():
            return self.password_file.read_text().rstrip("\n")
        return self.password.get_secret_value() if self.password is not None else None

    def user(self) -> str | None:
        if self.username_file is not None and self.username_file.exists():
            return self.username_file.read_text().strip() or None
        return self.username

    @staticmethod
    def present(path: pathlib.Path | None) -> str | None:
        return str(path) if path is not None and path.exists() else None
