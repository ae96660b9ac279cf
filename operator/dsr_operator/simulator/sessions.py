"""NITRO login sessions of the simulator: users, tokens, idle expiry, per-request credentials.

Tokens look like the appliance's (`##` followed by hex). A token that expired, was logged out or
was expired on purpose (fault injection) is remembered, so its next use is answered with 444
("Session expired or killed") rather than 1027 ("Not logged in"), as a client expects.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from collections.abc import Callable, Mapping

DEFAULT_USERS: Mapping[str, str] = {"nsroot": "nsroot"}
DEFAULT_TIMEOUT = 1800.0  # seconds of inactivity
MAX_DEAD_TOKENS = 10000  # expired tokens remembered, so that they get 444 rather than 1027


@dataclasses.dataclass
class Session:
    user: str
    timeout: float
    last_used: float


class SessionExpired(Exception):
    """The token was valid once but has expired or been killed (errorcode 444)."""


class NotLoggedIn(Exception):
    """No usable credentials at all (errorcode 1027)."""


class Sessions:
    """Users and live sessions; the clock is monotonic and injectable."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.timeout = timeout
        self.clock = clock
        self._live: dict[str, Session] = {}
        self._dead: dict[str, None] = {}  # insertion-ordered, bounded

    def check_password(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        # Compare even for unknown users, so timing does not reveal which user names exist.
        ok = hmac.compare_digest((expected or "\0").encode(), password.encode())
        return expected is not None and ok

    def login(self, user: str, password: str, timeout: float | None = None) -> str | None:
        """A new session token, or None if the credentials are wrong."""
        if not self.check_password(user, password):
            return None
        self._prune()
        token = "##" + secrets.token_hex(32).upper()
        self._live[token] = Session(user, timeout or self.timeout, self.clock())
        return token

    def touch(self, token: str) -> Session:
        """Validate a token and refresh its idle timer."""
        session = self._live.get(token)
        if session is None:
            if token in self._dead:
                raise SessionExpired()
            raise NotLoggedIn()
        now = self.clock()
        if now - session.last_used > session.timeout:
            self._kill(token)
            raise SessionExpired()
        session.last_used = now
        return session

    def logout(self, token: str) -> None:
        self._kill(token)

    def expire_all(self) -> int:
        """Expire every live session now; returns how many there were."""
        tokens = list(self._live)
        for token in tokens:
            self._kill(token)
        return len(tokens)

    def _kill(self, token: str) -> None:
        if self._live.pop(token, None) is not None:
            self._dead[token] = None
            while len(self._dead) > MAX_DEAD_TOKENS:
                del self._dead[next(iter(self._dead))]

    def _prune(self) -> None:
        now = self.clock()
        for token in [t for t, s in self._live.items() if now - s.last_used > s.timeout]:
            self._kill(token)

    def __len__(self) -> int:
        return len(self._live)
