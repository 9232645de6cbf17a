"""Real DeepSeekHashV1 challenges (protocol doc §5): issued, remembered, verified once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from ds2a.deepseek.pow import ALGORITHM, PowError, deepseek_hash_v1, parse_pow_header


@dataclass(slots=True)
class Issued:
    challenge: str
    salt: str
    expire_at: int
    difficulty: int
    answer: int
    target_path: str
    used: bool = False


class ChallengeBook:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._clock = clock
        self._issued: dict[str, Issued] = {}  # by salt: the header carries the salt, not expire_at
        self._since_sweep = 0

    def issue(self, target_path: str, difficulty: int, expire_after_ms: int) -> dict[str, Any]:
        """A `biz_data.challenge` object whose answer the simulator picked at random."""
        self._sweep()
        salt = secrets.token_hex(10)
        expire_at = int(self._clock() * 1000) + expire_after_ms
        answer = secrets.randbelow(difficulty)
        digest = deepseek_hash_v1(f"{salt}_{expire_at}_{answer}".encode()).hex()
        issued = Issued(digest, salt, expire_at, difficulty, answer, target_path)
        self._issued[salt] = issued
        return {
            "algorithm": ALGORITHM,
            "challenge": digest,
            "salt": salt,
            "signature": self._sign(ALGORITHM, digest, salt, expire_at, difficulty, target_path),
            "difficulty": difficulty,
            "expire_at": expire_at,
            "expire_after": expire_after_ms,
            "target_path": target_path,
        }

    def verify(self, header: str | None, path: str) -> str | None:
        """None when the header answers a live challenge for `path`; else why not.

        "missing" and "undecodable" are the documented MISSING_HEADER case; the other
        reasons are the simulator's own (the server's wording is unpublished).
        """
        if not header:
            return "missing"
        try:
            fields = parse_pow_header(header)
        except PowError:
            return "undecodable"
        salt, answer = fields.get("salt"), fields.get("answer")
        if not isinstance(salt, str) or type(answer) is not int:
            return "malformed"
        issued = self._issued.get(salt)
        if issued is None:
            return "unknown"
        # The MAC covers what the header claims, so any edited field fails here.
        expected = self._sign(
            str(fields.get("algorithm")), str(fields.get("challenge")), salt,
            issued.expire_at, issued.difficulty, str(fields.get("target_path")),
        )
        if not hmac.compare_digest(expected, str(fields.get("signature"))):
            return "signature"
        if fields.get("target_path") != path:
            return "target_path"
        if self._clock() * 1000 >= issued.expire_at:
            return "expired"
        if issued.used:
            return "reused"
        # Comparing with the answer we drew is the same test as hashing the client's
        # answer (the digest has one preimage in range) and costs nothing per request.
        if answer != issued.answer:
            return "answer"
        issued.used = True
        return None

    def answer_for(self, salt: str) -> int | None:
        """The answer drawn for a challenge: lets tests skip the scan they are not testing."""
        issued = self._issued.get(salt)
        return None if issued is None else issued.answer

    def clear(self) -> None:
        self._issued.clear()

    def _sign(self, algorithm: str, challenge: str, salt: str, expire_at: int, difficulty: int, target: str) -> str:
        message = f"{algorithm}|{challenge}|{salt}|{expire_at}|{difficulty}|{target}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _sweep(self) -> None:
        # Used challenges are kept until they expire so a replay is told apart from garbage.
        self._since_sweep += 1
        if self._since_sweep < 1024:
            return
        self._since_sweep = 0
        now_ms = self._clock() * 1000
        self._issued = {salt: c for salt, c in self._issued.items() if c.expire_at > now_ms}
