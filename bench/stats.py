"""Figures from decoded samples: latency percentiles, throughput, errors, exactness.

All latencies are in milliseconds. Percentiles interpolate linearly between the
two nearest ranks (numpy's default), so a p99 over fewer than 100 samples sits
between the two largest values rather than jumping to the maximum.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.control import Arrival
from bench.decode import Decoded
from bench.loadgen import Sample

CDF_POINTS = 200  # quantiles kept per distribution for the chart and the JSON


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of an ascending list; None when empty."""
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cdf(ordered: list[float], points: int = CDF_POINTS) -> list[float]:
    """The distribution reduced to ``points`` evenly spaced quantiles."""
    if not ordered:
        return []
    return [round(percentile(ordered, 100 * i / (points - 1)) or 0.0, 3) for i in range(points)]


@dataclass(slots=True)
class Figures:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    exact: int = 0
    inexact: int = 0
    tokens: int = 0
    ttft: dict[str, float | None] = field(default_factory=dict)
    gap: dict[str, float | None] = field(default_factory=dict)
    queue_wait: dict[str, float | None] = field(default_factory=dict)
    tokens_per_s: float = 0.0  # all tokens of the group over the run's window
    stream_tokens_per_s: float | None = None  # median over requests: tokens / request duration
    error_examples: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Measured:
    """One request after decoding: what the figures are computed from."""

    sample: Sample
    decoded: Decoded
    account: str
    arrival: Arrival | None

    @property
    def ttft_ms(self) -> float | None:
        times = self.decoded.token_times
        return (times[0] - self.sample.issued) * 1000 if times else None

    @property
    def queue_ms(self) -> float | None:
        if self.arrival is None:
            return None
        return max(0.0, (self.arrival.at - self.sample.issued_wall) * 1000)

    @property
    def failed(self) -> bool:
        return self.decoded.error is not None or not self.decoded.finished


def label(account_key: str | None) -> str:
    """A short, secret-free name for a simulator account key."""
    if not account_key:
        return "unknown"
    kind, _, ident = account_key.partition(":")
    if kind == "email":
        return ident.split("@", 1)[0]
    if kind == "token":
        return f"token:{ident[:4]}…"
    return account_key


def figures(group: list[Measured], window: float) -> Figures:
    out = Figures(requests=len(group))
    ttfts: list[float] = []
    gaps: list[float] = []
    waits: list[float] = []
    rates: list[float] = []
    for m in group:
        out.errors += m.failed
        out.ok += not m.failed
        if m.decoded.exact is not None:
            out.exact += m.decoded.exact
            out.inexact += not m.decoded.exact
        if m.decoded.error and len(out.error_examples) < 3:
            out.error_examples.append(m.decoded.error[:200])
        times = m.decoded.token_times
        out.tokens += len(times)
        if times:
            ttfts.append((times[0] - m.sample.issued) * 1000)
            gaps.extend((b - a) * 1000 for a, b in zip(times, times[1:]))
            duration = m.sample.ended - m.sample.issued
            if duration > 0:
                rates.append(len(times) / duration)
        if (wait := m.queue_ms) is not None:
            waits.append(wait)
    ttfts.sort()
    gaps.sort()
    waits.sort()
    rates.sort()
    out.ttft = {name: _round(percentile(ttfts, q)) for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
    out.gap = {name: _round(percentile(gaps, q)) for name, q in (("p50", 50), ("p99", 99))}
    out.queue_wait = {name: _round(percentile(waits, q)) for name, q in (("p50", 50), ("p99", 99), ("max", 100))}
    out.tokens_per_s = round(out.tokens / window, 1) if window > 0 else 0.0
    out.stream_tokens_per_s = _round(percentile(rates, 50))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def window_of(group: list[Measured]) -> float:
    """Seconds from the first request issued to the last token received."""
    starts = [m.sample.issued for m in group]
    ends = [m.decoded.token_times[-1] for m in group if m.decoded.token_times]
    if not starts or not ends:
        return 0.0
    return max(ends) - min(starts)


def per_account(group: list[Measured], window: float) -> dict[str, Figures]:
    by_account: dict[str, list[Measured]] = defaultdict(list)
    for m in group:
        by_account[m.account].append(m)
    return {name: figures(items, window) for name, items in sorted(by_account.items(), key=_natural)}


def _natural(item: tuple[str, Any]) -> tuple[str, int]:
    name = item[0]
    digits = name.rstrip("0123456789")
    tail = name[len(digits):]
    return digits, int(tail) if tail else -1


def max_concurrent(group: list[Measured]) -> int:
    """Most streams open at once: from the first token until the end of the answer."""
    edges: list[tuple[float, int]] = []
    for m in group:
        if m.decoded.token_times:
            edges.append((m.decoded.token_times[0], 1))
            edges.append((m.sample.ended, -1))
    edges.sort()
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def distributions(group: list[Measured]) -> dict[str, list[float]]:
    ttfts = sorted(t for m in group if (t := m.ttft_ms) is not None)
    gaps = sorted(
        (b - a) * 1000 for m in group for a, b in zip(m.decoded.token_times, m.decoded.token_times[1:])
    )
    return {"ttft_ms": cdf(ttfts), "gap_ms": cdf(gaps)}
