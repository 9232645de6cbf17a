"""DeepSeekHashV1 proof of work: the C extension and the pure-Python reference.

Expected values come from outside the code under test: literal vectors below,
../shared/fixtures/pow_vectors.json (skipped when absent), hashlib for SHA3-256,
and, for the C code, the Python reference (which the vectors check in turn).
Speed is measured by bench/pow_bench.py, never here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from typing import Any

import pytest

from ds2a.deepseek import pow as pow_mod
from ds2a.deepseek.pow import (
    Challenge,
    PowError,
    deepseek_hash_v1,
    parse_pow_header,
    pow_header,
    py_deepseek_hash_v1,
    py_sha3_256,
    py_solve,
    solve,
    solve_async,
)

from conftest import pow_vectors

_pow: Any
try:
    from ds2a.deepseek import _pow  # type: ignore[attr-defined, no-redef]
except ImportError:  # pragma: no cover - depends on the build
    _pow = None

needs_native = pytest.mark.skipif(
    _pow is None,
    reason="C extension ds2a.deepseek._pow is not built (reinstall with a C compiler: pip install -e .)",
)

# Every kernel this CPU can run, so the AVX-512, AVX2 and scalar paths are all checked here.
KERNELS: list[Any] = list(_pow.impls()) if _pow is not None else [pytest.param(None, marks=needs_native)]

# Copied from the public vectors so a fresh clone without ../shared still checks the hash.
LITERAL_HASHES = [
    (b"", "e594808bc5b7151ac160c6d39a02e0a8e261ed588578403099e3561dc40c26b3",
     "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"),
    (b"abc", "f841106c601ce9be9bc38525e90d4178d47f21dd8eb9f238fc55ffaa4ca94506",
     "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
    (b"testsalt_1700000000_42", "d4a2ea58c89e40887c933484868380c6f803eaa8dc53a3b9df8e431b921a4f09",
     "bd96250962d7599bebe8229606cb985a649acbb0b2e3770d06a4a77158a9ab22"),
]
# A challenge whose answer is the last one in range, so a scan must cover all of it.
LITERAL_CHALLENGE: dict[str, Any] = {
    "algorithm": "DeepSeekHashV1",
    "challenge": "901d8508ff29e03969cf11a1d21428675bc85c93bb99dc84a10b8e1fde7d95cf",
    "salt": "311e1413b58cd1ea37fc",
    "signature": "0" * 64,
    "difficulty": 1000,
    "expire_at": 1768820358921,
    "expire_after": 300000,
    "target_path": "/api/v0/chat/completion",
}
LITERAL_ANSWER = 999


def _challenge(data: dict[str, Any]) -> Challenge:
    # Vector entries carry extra keys (answer, hashed_input, ...); from_json reads only its own.
    return Challenge.from_json(data)


def _unsolvable(prefix: bytes = b"no-answer_1700000000_", difficulty: int = 2000) -> Challenge:
    """A challenge whose digest is the hash of an answer just past the range."""
    digest = py_deepseek_hash_v1(prefix + str(difficulty).encode()).hex()
    salt, expire_at, _ = prefix.decode().split("_")
    return _challenge({**LITERAL_CHALLENGE, "challenge": digest, "salt": salt,
                       "expire_at": int(expire_at), "difficulty": difficulty})


# --- literal vectors (always run) ----------------------------------------------------


@pytest.mark.parametrize(("data", "v1", "sha3"), LITERAL_HASHES)
def test_literal_hashes_python(data: bytes, v1: str, sha3: str) -> None:
    assert py_deepseek_hash_v1(data).hex() == v1
    assert py_sha3_256(data).hex() == sha3


@needs_native
@pytest.mark.parametrize(("data", "v1", "sha3"), LITERAL_HASHES)
def test_literal_hashes_native(data: bytes, v1: str, sha3: str) -> None:
    assert _pow.hash_v1(data).hex() == v1
    assert _pow.sha3_256(data).hex() == sha3
    assert deepseek_hash_v1(data).hex() == v1


def test_literal_challenge_python() -> None:
    challenge = Challenge.from_json(LITERAL_CHALLENGE)
    assert py_solve(challenge) == LITERAL_ANSWER


@pytest.mark.parametrize("kernel", KERNELS)
def test_literal_challenge_native(kernel: str) -> None:
    challenge = Challenge.from_json(LITERAL_CHALLENGE)
    target = bytes.fromhex(challenge.challenge)
    assert _pow.solve(target, challenge.prefix, challenge.difficulty, impl=kernel) == LITERAL_ANSWER
    # One short of the answer: the range is exclusive at the top, as the site's solver.
    assert _pow.solve(target, challenge.prefix, LITERAL_ANSWER, impl=kernel) == -1


# --- ../shared vectors ---------------------------------------------------------------


def test_shared_hash_vectors() -> None:
    vectors = pow_vectors()["hash_vectors"]
    assert vectors
    for vec in vectors:
        data = vec["input"].encode()
        assert py_deepseek_hash_v1(data).hex() == vec["deepseek_hash_v1"]
        assert py_sha3_256(data).hex() == vec["sha3_256"]
        if _pow is not None:
            assert _pow.hash_v1(data).hex() == vec["deepseek_hash_v1"]
            assert _pow.sha3_256(data).hex() == vec["sha3_256"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_shared_challenges_native(kernel: str) -> None:
    vectors = pow_vectors()["vectors"]
    assert vectors
    for vec in vectors:
        challenge = _challenge(vec)
        found = _pow.solve(bytes.fromhex(challenge.challenge), challenge.prefix, challenge.difficulty,
                           impl=kernel)
        assert found == vec["answer"], vec["hashed_input"]
        assert challenge.prefix + str(found).encode() == vec["hashed_input"].encode()
        assert pow_header(challenge, found) == vec["x_ds_pow_response"]


@needs_native
def test_shared_challenges_public_api() -> None:
    for vec in pow_vectors()["vectors"]:
        assert solve(_challenge(vec)) == vec["answer"]


def test_shared_small_challenges_python() -> None:
    small = [vec for vec in pow_vectors()["vectors"] if vec["answer"] <= 1000]
    assert len(small) >= 5
    for vec in small:
        challenge = _challenge(vec)
        assert py_solve(challenge) == vec["answer"]
        assert pow_header(challenge, vec["answer"]) == vec["x_ds_pow_response"]


def test_shared_public_known_answers_python() -> None:
    known = pow_vectors()["public_known_answers"]
    assert known
    for vec in known:
        challenge = _challenge(vec)
        hashed = challenge.prefix + str(vec["answer"]).encode()
        assert hashed == vec["hashed_input"].encode()
        assert py_deepseek_hash_v1(hashed).hex() == vec["challenge"]
        header = pow_header(challenge, vec["answer"])
        assert header == vec["x_ds_pow_response"]
        if "published_header" in vec:
            published: str = vec["published_header"]
            assert header == published + "=" * (-len(published) % 4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_shared_public_known_answers_native(kernel: str) -> None:
    for vec in pow_vectors()["public_known_answers"]:
        challenge = _challenge(vec)
        found = _pow.solve(bytes.fromhex(challenge.challenge), challenge.prefix, challenge.difficulty,
                           impl=kernel)
        assert found == vec["answer"], vec["source"]


# --- C and Python agree ----------------------------------------------------------------


@needs_native
def test_native_matches_python_on_random_inputs() -> None:
    rng = random.Random(20240601)
    lengths = [rng.randrange(0, 601) for _ in range(300)] + [135, 136, 137, 271, 272, 273]
    for length in lengths:
        data = rng.randbytes(length)
        assert _pow.hash_v1(data) == py_deepseek_hash_v1(data), length


@pytest.mark.parametrize("length", [0, 1, 55, 135, 136, 137, 272, 300, 600])
def test_sha3_matches_hashlib(length: int) -> None:
    data = random.Random(length).randbytes(length)
    expected = hashlib.sha3_256(data).digest()
    assert py_sha3_256(data) == expected
    if _pow is not None:
        assert _pow.sha3_256(data) == expected


@needs_native
def test_native_hash_accepts_buffers() -> None:
    data = b"salt_1700000000_7"
    expected = py_deepseek_hash_v1(data)
    assert _pow.hash_v1(bytearray(data)) == expected
    assert _pow.hash_v1(memoryview(data)) == expected


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("prefix_len", [0, 1, 35, 120, 126, 127, 133, 134, 135, 136, 137, 271, 300])
def test_native_solve_any_prefix_length(kernel: str, prefix_len: int) -> None:
    # Long prefixes put the digits, or just the padding byte, into a second block.
    rng = random.Random(prefix_len)
    prefix = rng.randbytes(prefix_len)
    for answer in (0, 9, 10, 99, 100, rng.randrange(101, 1200)):
        target = py_deepseek_hash_v1(prefix + str(answer).encode())
        assert _pow.solve(target, prefix, answer + 1, impl=kernel) == answer
        assert _pow.solve(target, prefix, answer + 20, impl=kernel) == answer
        assert _pow.solve(target, prefix, answer, impl=kernel) == -1


@pytest.mark.parametrize("kernel", KERNELS)
def test_native_solve_huge_difficulty(kernel: str) -> None:
    # Run in a thread with a deadline: a kernel that missed the answer would scan
    # for minutes (10**9) or forever (2**63 - 1) instead of failing.
    prefix = b"abc_1700000000_"
    target = py_deepseek_hash_v1(prefix + b"12345")
    results: list[int] = []

    def scan() -> None:
        results.append(_pow.solve(target, prefix, 10**9, impl=kernel))
        results.append(_pow.solve(target, prefix, 2**63 - 1, impl=kernel))

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert results == [12345, 12345]


@needs_native
def test_native_solve_validates_arguments() -> None:
    target = bytes(32)
    with pytest.raises(ValueError, match="32-byte"):
        _pow.solve(bytes(31), b"p", 10)
    with pytest.raises(ValueError, match="difficulty"):
        _pow.solve(target, b"p", -1)
    with pytest.raises(TypeError):
        _pow.solve(target, "p", 10)
    with pytest.raises(TypeError):
        _pow.solve("00" * 32, b"p", 10)
    with pytest.raises(OverflowError):
        _pow.solve(target, b"p", 2**64)
    with pytest.raises(ValueError, match="unknown"):
        _pow.solve(target, b"p", 10, impl="quantum")
    assert _pow.solve(target, b"p", 0) == -1
    assert _pow.impl() in _pow.impls()
    assert pow_mod.IMPL == _pow.impl()


# --- errors ----------------------------------------------------------------------------


@needs_native
def test_no_answer_in_range_native() -> None:
    with pytest.raises(PowError, match="no answer"):
        solve(_unsolvable())


def test_no_answer_in_range_python() -> None:
    with pytest.raises(PowError, match="no answer"):
        py_solve(_unsolvable(difficulty=50))


def test_bad_algorithm_is_named() -> None:
    with pytest.raises(PowError, match="DeepSeekHashV2"):
        Challenge.from_json({**LITERAL_CHALLENGE, "algorithm": "DeepSeekHashV2"})
    with pytest.raises(PowError, match="None"):
        Challenge.from_json({k: v for k, v in LITERAL_CHALLENGE.items() if k != "algorithm"})


@pytest.mark.parametrize(
    "change",
    [{"challenge": "zz" * 32}, {"challenge": "ab" * 31}, {"difficulty": 0}, {"difficulty": "many"}],
)
def test_malformed_challenge(change: dict[str, Any]) -> None:
    with pytest.raises(PowError):
        Challenge.from_json({**LITERAL_CHALLENGE, **change})


def test_challenge_digest_is_lowercased() -> None:
    upper = LITERAL_CHALLENGE["challenge"].upper()
    assert Challenge.from_json({**LITERAL_CHALLENGE, "challenge": upper}).challenge == upper.lower()


def test_header_round_trip() -> None:
    challenge = Challenge.from_json(LITERAL_CHALLENGE)
    decoded = parse_pow_header(pow_header(challenge, LITERAL_ANSWER))
    assert list(decoded) == ["algorithm", "challenge", "salt", "answer", "signature", "target_path"]
    assert decoded["answer"] == LITERAL_ANSWER
    with pytest.raises(PowError):
        parse_pow_header("not base64!")


# --- fallback --------------------------------------------------------------------------


def test_python_fallback_warns_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pow_mod, "_pow", None)
    monkeypatch.setattr(pow_mod, "_warned", False)
    challenge = Challenge.from_json({**LITERAL_CHALLENGE, "difficulty": LITERAL_ANSWER + 1})
    with caplog.at_level(logging.WARNING, logger=pow_mod.__name__):
        assert solve(challenge) == LITERAL_ANSWER
        assert solve(challenge) == LITERAL_ANSWER
        assert pow_mod.deepseek_hash_v1(b"abc").hex() == LITERAL_HASHES[1][1]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "C extension" in warnings[0].getMessage()


# --- concurrency -----------------------------------------------------------------------

LONG_SCAN = 5_000_000  # no answer: about 0.3 s with AVX-512, 0.5 s AVX2, 1.8 s scalar


@needs_native
def test_native_solve_releases_the_gil() -> None:
    # The ticker sleeps between ticks, so it only runs when the caller's thread lets
    # go of the GIL: a scan that held it would see at most a tick or two.
    ticks = 0
    stop = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        challenge = _unsolvable(difficulty=LONG_SCAN)
        before = ticks
        found = _pow.solve(bytes.fromhex(challenge.challenge), challenge.prefix, LONG_SCAN)
        during = ticks - before
    finally:
        stop.set()
        thread.join()
    assert found == -1
    assert during >= 20, f"only {during} ticks while the native scan ran"


async def test_solve_async_result() -> None:
    challenge = Challenge.from_json(LITERAL_CHALLENGE)
    assert await solve_async(challenge) == LITERAL_ANSWER


@needs_native
async def test_solve_async_keeps_event_loop_running() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(PowError):
            await solve_async(_unsolvable(difficulty=LONG_SCAN))
    finally:
        task.cancel()
    assert ticks >= 20



def test_background_scans_run_one_at_a_time_in_one_thread() -> None:
    """Tickets prepared ahead queue up in one thread instead of taking every core."""
    challenge = pow_mod.Challenge.from_json(LITERAL_CHALLENGE)
    threads: list[str] = []
    running = 0
    most = 0
    original = pow_mod.solve
    lock = threading.Lock()

    def spy(ch: pow_mod.Challenge) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threads.append(threading.current_thread().name)
        try:
            time.sleep(0.01)  # long enough for scans submitted together to overlap if they could
            return original(ch)
        finally:
            with lock:
                running -= 1

    async def main() -> list[int]:
        return list(await asyncio.gather(*(pow_mod.solve_async(challenge, background=True) for _ in range(4))))

    pow_mod.solve = spy  # type: ignore[assignment]
    try:
        answers = asyncio.run(main())
    finally:
        pow_mod.solve = original  # type: ignore[assignment]
    assert answers == [LITERAL_ANSWER] * 4
    assert most == 1
    assert len(set(threads)) == 1 and threads[0].startswith("ds2a-pow")
