"""DeepSeekHashV1 proof of work (protocol doc §5).

DeepSeekHashV1 is SHA3-256 whose Keccak-f[1600] permutation skips round 0 and
runs rounds 1..23. A challenge names a digest; the answer is the integer n in
[0, difficulty) whose input ``salt + "_" + expire_at + "_" + n`` hashes to it.

The C extension ``ds2a.deepseek._pow`` does the scan at native speed without
holding the GIL; the pure-Python code here is the reference and the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ALGORITHM = "DeepSeekHashV1"
COMPLETION_PATH = "/api/v0/chat/completion"
_HEX_DIGITS = frozenset("0123456789abcdef")


class PowError(Exception):
    """A challenge that cannot be solved: unknown algorithm, bad fields, or no answer in range."""


@dataclass(frozen=True, slots=True)
class Challenge:
    algorithm: str
    challenge: str
    salt: str
    signature: str
    difficulty: int
    expire_at: int
    expire_after: int
    target_path: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Challenge:
        """Build from the server's ``biz_data.challenge`` object; refuse what we cannot solve."""
        algorithm = data.get("algorithm")
        if algorithm != ALGORITHM:
            raise PowError(
                f"unsupported proof-of-work algorithm {algorithm!r}: ds2a only knows "
                f"{ALGORITHM}; DeepSeek has probably changed its proof of work"
            )
        try:
            challenge = cls(
                algorithm=algorithm,
                challenge=str(data["challenge"]).lower(),
                salt=str(data["salt"]),
                signature=str(data["signature"]),
                difficulty=int(data["difficulty"]),
                expire_at=int(data["expire_at"]),
                expire_after=int(data.get("expire_after", 300_000)),
                target_path=str(data.get("target_path", COMPLETION_PATH)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PowError(f"malformed proof-of-work challenge: {exc!r}") from exc
        if len(challenge.challenge) != 64 or not all(c in _HEX_DIGITS for c in challenge.challenge):
            raise PowError(f"malformed proof-of-work challenge digest {challenge.challenge!r}")
        if not 0 < challenge.difficulty < 1 << 63:  # the C scan counts in a signed 64-bit int
            raise PowError(f"bad proof-of-work difficulty {challenge.difficulty}")
        return challenge

    @property
    def prefix(self) -> bytes:
        """Everything hashed before the decimal answer."""
        return f"{self.salt}_{self.expire_at}_".encode()


# --- Keccak-f[1600], pure Python -------------------------------------------------

_MASK = (1 << 64) - 1
_ROUND_CONSTANTS = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)
# Rotation offsets indexed by lane x + 5*y.
_ROTATIONS = (
    0, 1, 62, 28, 27,
    36, 44, 6, 55, 20,
    3, 10, 43, 25, 39,
    41, 45, 15, 21, 8,
    18, 2, 61, 56, 14,
)
_RATE = 136  # bytes, SHA3-256


def _keccak_f(lanes: list[int], first_round: int) -> None:
    for rc in _ROUND_CONSTANTS[first_round:]:
        c = [lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20] for x in range(5)]
        for x in range(5):
            d = c[x - 1] ^ (((c[(x + 1) % 5] << 1) | (c[(x + 1) % 5] >> 63)) & _MASK)
            for y in range(0, 25, 5):
                lanes[x + y] ^= d
        b = [0] * 25
        for x in range(5):
            for y in range(5):
                r = _ROTATIONS[x + 5 * y]
                v = lanes[x + 5 * y]
                b[y + 5 * ((2 * x + 3 * y) % 5)] = ((v << r) | (v >> (64 - r))) & _MASK if r else v
        for y in range(0, 25, 5):
            row = b[y : y + 5]
            for x in range(5):
                lanes[x + y] = row[x] ^ (~row[(x + 1) % 5] & row[(x + 2) % 5])
        lanes[0] ^= rc


def _sponge_256(data: bytes, first_round: int) -> bytes:
    padded = bytearray(data)
    padded.append(0x06)
    padded.extend(b"\x00" * (-len(padded) % _RATE))
    padded[-1] |= 0x80
    lanes = [0] * 25
    for offset in range(0, len(padded), _RATE):
        block = padded[offset : offset + _RATE]
        for i in range(_RATE // 8):
            lanes[i] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _keccak_f(lanes, first_round)
    return b"".join(lane.to_bytes(8, "little") for lane in lanes[:4])


def py_deepseek_hash_v1(data: bytes) -> bytes:
    """DeepSeekHashV1 in pure Python (the reference)."""
    return _sponge_256(data, first_round=1)


def py_sha3_256(data: bytes) -> bytes:
    """Standard SHA3-256 from the same code, all 24 rounds: checks the shared machinery."""
    return _sponge_256(data, first_round=0)


def py_solve(challenge: Challenge) -> int:
    target = bytes.fromhex(challenge.challenge)
    prefix = challenge.prefix
    for answer in range(challenge.difficulty):
        if py_deepseek_hash_v1(prefix + str(answer).encode()) == target:
            return answer
    raise PowError(f"no answer below difficulty {challenge.difficulty} for challenge {challenge.challenge}")


# --- Public API: native when built, Python otherwise -----------------------------

try:
    from ds2a.deepseek import _pow  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _pow = None

NATIVE = _pow is not None
# What solve() runs: the C kernel picked for this CPU ("avx512", "avx2", "scalar") or "python".
IMPL: str = _pow.impl() if _pow is not None else "python"
_warned = False


def _warn_slow() -> None:
    # Once per process: every completion needs a challenge, so repeating it would flood the log.
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "proof-of-work C extension not available: solving in pure Python takes tens of "
            "seconds per challenge; reinstall ds2a with a C compiler present (pip install -e .)"
        )


def deepseek_hash_v1(data: bytes) -> bytes:
    if _pow is not None:
        return _pow.hash_v1(data)
    return py_deepseek_hash_v1(data)


def solve(challenge: Challenge) -> int:
    """Find the answer; blocking (native code releases the GIL while it scans)."""
    if _pow is not None:
        answer = _pow.solve(bytes.fromhex(challenge.challenge), challenge.prefix, challenge.difficulty)
        if answer < 0:
            raise PowError(
                f"no answer below difficulty {challenge.difficulty} for challenge {challenge.challenge}"
            )
        return answer
    _warn_slow()
    return py_solve(challenge)


_background: ThreadPoolExecutor | None = None


def _background_executor() -> ThreadPoolExecutor:
    global _background
    if _background is None:
        _background = ThreadPoolExecutor(1, thread_name_prefix="ds2a-pow")
    return _background


async def solve_async(challenge: Challenge, *, background: bool = False) -> int:
    """Solve off the event loop so a scan never stalls streaming.

    ``background`` scans (tickets prepared ahead of requests) run one at a time in one
    dedicated thread: a burst of preparations queues up instead of taking every core
    (measured: six scans at once beside the loop held back 64 first tokens by ~150 ms).
    A scan a request is waiting for runs in the default executor, beside them.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_background_executor() if background else None, solve, challenge)


def pow_header(challenge: Challenge, answer: int) -> str:
    """The ``x-ds-pow-response`` value, built exactly as protocol doc §5.4 says."""
    payload = {
        "algorithm": challenge.algorithm,
        "challenge": challenge.challenge,
        "salt": challenge.salt,
        "answer": answer,
        "signature": challenge.signature,
        "target_path": challenge.target_path,
    }
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.b64encode(raw).decode("ascii")


def parse_pow_header(value: str) -> dict[str, Any]:
    """Decode an ``x-ds-pow-response`` value (the simulator's side of §5.4)."""
    try:
        decoded = json.loads(base64.b64decode(value, validate=True))
    except Exception as exc:
        raise PowError(f"undecodable x-ds-pow-response: {exc}") from exc
    if not isinstance(decoded, dict):
        raise PowError("x-ds-pow-response is not a JSON object")
    return decoded
