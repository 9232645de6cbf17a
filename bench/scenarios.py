"""The scenarios of a run, full and ``--quick``.

Every scenario is run twice with the same load: once straight against the
simulator (``direct``) and once through a freshly started gateway. Thinking is on
everywhere (``deepseek-reasoner``): reasoning then answer, as most clients use it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

REAL_DIFFICULTY = 144_000  # what DeepSeek's challenges say


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    clients: int
    accounts: int
    delay: float  # seconds between upstream frames
    thinking_tokens: int
    answer_tokens: int
    difficulty: int = REAL_DIFFICULTY
    mode: str = "continuous"  # continuous: back-to-back requests; waves: all at once, idle in between
    duration: float = 5.0  # continuous: seconds during which new requests start
    max_requests: int = 100_000
    waves: int = 1
    ramp: float = 0.0  # waves: seconds over which a wave's requests are spread
    warmup: bool = True  # one short unmeasured request per account first (connections open)
    poll: float = 0.25  # seconds between two reads of the simulator's request records
    pinned: bool = True  # False: this scenario runs with every process on every CPU
    redis: bool = False  # the gateway's pool is the Redis-shared one (`--redis`)

    @property
    def tokens_per_answer(self) -> int:
        return self.thinking_tokens + self.answer_tokens


FULL: tuple[Scenario, ...] = (
    Scenario("ttft-1", "TTFT, 1 stream on 1 idle account, 20 ms pacing", 1, 1, 0.02, 1, 2,
             mode="waves", waves=30),
    Scenario("ttft-64", "TTFT, 64 streams on 64 idle accounts, 20 ms pacing", 64, 64, 0.02, 1, 2,
             mode="waves", waves=5),
    # 1000-token answers (400 reasoning + 600 answer), a typical reasoner reply: every
    # answer also costs a ~4 ms proof of work, which shorter answers would weigh more.
    Scenario("relay-1", "relay speed, 1 stream, 0 ms", 1, 1, 0.0, 400, 600, duration=4.0),
    Scenario("relay-8", "relay speed, 8 streams on 8 accounts, 0 ms", 8, 8, 0.0, 400, 600, duration=4.0),
    Scenario("relay-64", "relay speed, 64 streams on 64 accounts, 0 ms", 64, 64, 0.0, 400, 600, duration=5.0),
    # One 500-token answer per client (10 s at 20 ms): per-request costs (session, PoW)
    # weigh on the CPU figure about as much as they do on a real answer, not more.
    Scenario("paced-1", "realistic pacing, 1 stream, 20 ms", 1, 1, 0.02, 250, 250, duration=1.0),
    Scenario("paced-8", "realistic pacing, 8 streams on 8 accounts, 20 ms", 8, 8, 0.02, 250, 250, duration=1.0),
    Scenario("paced-64", "realistic pacing, 64 streams on 64 accounts, 20 ms", 64, 64, 0.02, 250, 250,
             duration=1.0),
    Scenario("queue-32x8", "queueing, 32 clients over 8 accounts, 20 ms", 32, 8, 0.02, 10, 20, duration=6.0),
    Scenario("idle-1000", "1000 slow streams held at once, 500 ms pacing", 1000, 1000, 0.5, 2, 10,
             mode="waves", waves=1, ramp=2.0, warmup=False, poll=0.1),
    Scenario("relay-64-unpinned", "relay speed, 64 streams, 0 ms, no CPU pinning", 64, 64, 0.0, 400, 600,
             duration=5.0, pinned=False),
)

QUICK: tuple[Scenario, ...] = (
    replace(FULL[0], waves=5),
    Scenario("relay-8", "relay speed, 8 streams on 8 accounts, 0 ms", 8, 8, 0.0, 100, 150, duration=1.0),
    Scenario("paced-8", "realistic pacing, 8 streams on 8 accounts, 20 ms", 8, 8, 0.02, 10, 20, duration=0.5),
    Scenario("queue-8x2", "queueing, 8 clients over 2 accounts, 20 ms", 8, 2, 0.02, 5, 10, duration=0.8),
    Scenario("idle-50", "50 slow streams held at once, 100 ms pacing", 50, 50, 0.1, 2, 4,
             mode="waves", waves=1, ramp=0.2, warmup=False, poll=0.1),
)


def select(names: str | None, quick: bool) -> list[Scenario]:
    table = QUICK if quick else FULL
    if not names:
        return list(table)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    # A name in both tables means the variant of the mode asked for.
    known = {s.name: s for s in ((*FULL, *QUICK) if quick else (*QUICK, *FULL))}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def with_redis(scenarios: list[Scenario]) -> list[Scenario]:
    """``--redis``: each scenario twice, embedded pool then Redis-shared pool, side by side."""
    out: list[Scenario] = []
    for s in scenarios:
        out += [s, replace(s, name=s.name + "+redis", title=s.title + ", pool shared through Redis", redis=True)]
    return out
