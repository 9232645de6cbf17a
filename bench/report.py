"""What a run leaves behind: targets with PASS/MISS, a JSON file, a Markdown table, a PNG chart."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import ALLOWED_CPUS, ROOT
from bench.stats import Figures
from bench.scenarios import Scenario
from bench.suite import RunResult, ScenarioResult

RSS_LIMIT_MB = 60.0  # MB = 10^6 bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    scenario: str
    measured: str
    goal: str
    passed: bool | None  # None: its scenario was not part of this run

    @property
    def word(self) -> str:
        return {True: "PASS", False: "MISS", None: "not run"}[self.passed]


# --- targets --------------------------------------------------------------------


def verdicts(results: list[ScenarioResult]) -> list[Verdict]:
    by_name = {r.scenario.name: r for r in results}
    return [
        _throughput(by_name.get("relay-64")),
        _cpu(by_name.get("paced-64")),
        _ttft(by_name.get("ttft-1"), "p50", 2.0, "TTFT overhead, 1 stream (median)"),
        _ttft(by_name.get("ttft-64"), "p99", 15.0, "TTFT overhead, 64 streams on 64 accounts (p99)"),
        _rss([r for r in results if r.scenario.clients == 64 and r.scenario.accounts == 64]),
        _idle(by_name.get("idle-1000")),
        _exactness(results),
        _upstream_rules(results),
    ]


def _throughput(r: ScenarioResult | None) -> Verdict:
    name, goal = "relay throughput vs direct, 64 streams, 0 ms", ">= 0.80x"
    if r is None:
        return Verdict(name, "relay-64", "-", goal, None)
    ratio = _ratio(r.gateway.overall.tokens_per_s, r.direct.overall.tokens_per_s)
    return Verdict(name, "relay-64", f"{ratio:.2f}x ({r.gateway.overall.tokens_per_s:,.0f} vs "
                   f"{r.direct.overall.tokens_per_s:,.0f} tok/s)", goal, ratio is not None and ratio >= 0.8)


def _cpu(r: ScenarioResult | None) -> Verdict:
    name, goal = "gateway CPU per 1000 tokens, 64 streams, 20 ms", "<= 0.030 s"
    if r is None:
        return Verdict(name, "paced-64", "-", goal, None)
    value = r.gateway.cpu_per_1k_tokens.get("gateway")
    return Verdict(name, "paced-64", f"{value:.4f} s" if value is not None else "no tokens", goal,
                   value is not None and value <= 0.03)


def _ttft(r: ScenarioResult | None, q: str, limit: float, name: str) -> Verdict:
    scenario = "ttft-1" if q == "p50" else "ttft-64"
    goal = f"<= {limit:g} ms"
    if r is None:
        return Verdict(name, scenario, "-", goal, None)
    gw, direct = r.gateway.overall.ttft.get(q), r.direct.overall.ttft.get(q)
    if gw is None or direct is None:
        return Verdict(name, scenario, "no first token", goal, False)
    overhead = gw - direct
    return Verdict(name, scenario, f"{overhead:+.2f} ms ({gw:.2f} vs {direct:.2f})", goal, overhead <= limit)


def _rss(rs: list[ScenarioResult]) -> Verdict:
    name, goal = "gateway peak RSS, 64 streams", f"<= {RSS_LIMIT_MB:g} MB"
    peaks = [(r.gateway.memory_mb.get("gateway_peak_rss") or 0.0, r.scenario.name) for r in rs]
    if not peaks:
        return Verdict(name, "*-64", "-", goal, None)
    peak, where = max(peaks)
    return Verdict(name, where, f"{peak:.1f} MB (VmHWM)", goal, peak <= RSS_LIMIT_MB)


def _idle(r: ScenarioResult | None) -> Verdict:
    name, goal = "1000 idle SSE streams held at once", "1000 open, 0 errors"
    if r is None:
        return Verdict(name, "idle-1000", "-", goal, None)
    o = r.gateway.overall
    ok = o.errors == 0 and o.inexact == 0 and r.gateway.max_concurrent >= r.scenario.clients
    return Verdict(name, "idle-1000", f"{r.gateway.max_concurrent} open at once, {o.errors} errors, "
                   f"{o.exact}/{o.requests} exact", goal, ok)


def _exactness(results: list[ScenarioResult]) -> Verdict:
    bad = [f"{r.scenario.name}/{run.kind}" for r in results for run in (r.direct, r.gateway)
           if run.overall.inexact or run.overall.errors]
    return Verdict("every byte arrived, in order (all runs)", "all", "all exact" if not bad else "; ".join(bad),
                   "0 inexact, 0 errors", not bad if results else None)


def _upstream_rules(results: list[ScenarioResult]) -> Verdict:
    """What the simulator saw: never two generations on one account, no cut stream, no bad PoW."""
    bad = []
    for r in results:
        for run in (r.direct, r.gateway):
            c = run.sim_counters
            if c.get("parallel_violations") or (c.get("max_active_per_account") or 0) > 1 or c.get("disconnects") \
                    or c.get("pow_rejects") or c.get("incomplete"):
                bad.append(f"{r.scenario.name}/{run.kind}")
    return Verdict("upstream rules kept (one stream per account, no cut stream, no PoW reject)", "all",
                   "all clean" if not bad else "; ".join(bad), "0 violations", not bad if results else None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --- machine ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _lscpu("Model name") or platform.processor(),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": len(ALLOWED_CPUS),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": _version("uvloop"),
        "aiohttp": _version("aiohttp"),
        "h11": _version("h11"),
        "pow_native": _pow_native(),
    }


def _lscpu(field: str) -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pow_native() -> bool:
    from ds2a.deepseek import pow as pow_

    return bool(pow_.NATIVE)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def meta(*, quick: bool, pinning: str, started: dt.datetime, seconds: float) -> dict[str, Any]:
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "quick": quick,
        "pinning": pinning,
        "commit": git_commit(),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
    }


# --- JSON -----------------------------------------------------------------------------


def write_json(path: Path, info: dict[str, Any], results: list[ScenarioResult], verdicts_: list[Verdict],
               extra: dict[str, Any] | None = None) -> None:
    body = {
        "meta": info,
        "targets": [{**asdict(v), "verdict": v.word} for v in verdicts_],
        "scenarios": [r.as_json() for r in results],
        **(extra or {}),
    }
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False))


# --- Markdown ---------------------------------------------------------------------------


def markdown(info: dict[str, Any], results: list[ScenarioResult], verdicts_: list[Verdict],
             chart: str | None) -> str:
    m = info["machine"]
    lines = [
        f"# ds2a streaming bench, {info['date']}",
        "",
        f"- machine: {m['cpu_model']}, {m['cpus_allowed']} CPUs; Linux {m['kernel']}; Python {m['python']}, "
        f"uvloop {m['uvloop']}, aiohttp {m['aiohttp']}, h11 {m['h11']}; native PoW: {m['pow_native']}",
        f"- commit {info['commit']}; command `{info['command']}`; {info['seconds']} s; pinning: {info['pinning']}",
        "",
        "## Targets",
        "",
        "| target | scenario | measured | goal | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {v.target} | {v.scenario} | {v.measured} | {v.goal} | **{v.word}** |" for v in verdicts_]
    lines += ["", "## Scenarios (gateway vs the simulator alone)", ""]
    for r in results:
        lines += scenario_table(r)
    if chart:
        lines += ["## Latency distributions", "", f"![latency distributions]({chart})", ""]
    for r in results:
        if r.gateway.profile:
            lines += profile_table(r.scenario.name, r.gateway.profile)
    return "\n".join(lines) + "\n"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    r = _ratio(a, b)
    return "-" if r is None else f"{r:.2f}x"


Row = tuple[str, str, str, str]


def scenario_table(r: ScenarioResult) -> list[str]:
    head = [f"### {r.scenario.name}: {r.scenario.title}", "", _load_line(r.scenario), "",
            "| figure | gateway | direct | gateway/direct |", "| --- | ---: | ---: | ---: |"]
    rows = _latency_rows(r.gateway.overall, r.direct.overall) + _cost_rows(r.gateway, r.direct)
    c = r.gateway.sim_counters
    sanity = (f"Upstream view (gateway run): {c.get('completions')} completions, {c.get('parallel_violations')} "
              f"parallel violations, max {c.get('max_active_per_account')} stream(s) per account, "
              f"{c.get('pow_rejects')} PoW rejects; {r.gateway.unattributed} request(s) without a known account.")
    return head + [f"| {a} | {b} | {c_} | {e} |" for a, b, c_, e in rows] + ["", sanity, ""] + account_table(r)


def _load_line(s: Scenario) -> str:
    shape = (f"{s.duration:g} s of back-to-back requests" if s.mode == "continuous"
             else f"{s.waves} wave(s) of simultaneous requests on idle, ready accounts")
    return (f"{s.clients} clients, {s.accounts} accounts, {s.delay * 1000:g} ms between frames, "
            f"{s.thinking_tokens}+{s.answer_tokens} tokens per answer (reasoning+answer), difficulty {s.difficulty}, "
            f"{shape}" + ("" if s.pinned else "; **no CPU pinning**"))


def _latency_rows(go: Figures, do: Figures) -> list[Row]:
    rows: list[Row] = [
        ("requests (errors)", f"{go.requests} ({go.errors})", f"{do.requests} ({do.errors})", "-"),
        ("exact answers", f"{go.exact}/{go.requests}", f"{do.exact}/{do.requests}", "-"),
    ]
    rows += [(f"TTFT {q} (ms)", _ms(go.ttft[q]), _ms(do.ttft[q]), _fmt_ratio(go.ttft[q], do.ttft[q]))
             for q in ("p50", "p90", "p99", "max")]
    rows += [(f"inter-token gap {q} (ms)", _ms(go.gap[q]), _ms(do.gap[q]), _fmt_ratio(go.gap[q], do.gap[q]))
             for q in ("p50", "p99")]
    rows += [(f"queue wait {q} (ms)", _ms(go.queue_wait[q]), _ms(do.queue_wait[q]), "-") for q in ("p50", "p99")]
    rows += [
        ("tokens/s, all streams", _num(go.tokens_per_s), _num(do.tokens_per_s),
         _fmt_ratio(go.tokens_per_s, do.tokens_per_s)),
        ("tokens/s per stream (median)", _num(go.stream_tokens_per_s), _num(do.stream_tokens_per_s),
         _fmt_ratio(go.stream_tokens_per_s, do.stream_tokens_per_s)),
        ("tokens relayed", _num(go.tokens), _num(do.tokens), "-"),
    ]
    return rows


def _cost_rows(g: RunResult, d: RunResult) -> list[Row]:
    gc, dc = g.cpu_per_1k_tokens, d.cpu_per_1k_tokens
    return [
        ("gateway CPU s / 1000 tokens (direct: its PoW threads)", _num(gc.get("gateway"), 4),
         _num(dc.get("direct_pow"), 4), "-"),
        ("  of which event loop, user / system",
         f"{_num(gc.get('gateway_loop_user'), 4)} / {_num(gc.get('gateway_loop_system'), 4)}", "-", "-"),
        ("  of which worker threads (PoW)", _num(gc.get("gateway_workers"), 4), "-", "-"),
        ("simulator CPU s / 1000 tokens", _num(gc.get("simulator"), 4), _num(dc.get("simulator"), 4), "-"),
        ("load generator CPU s / 1000 tokens", _num(gc.get("loadgen"), 4), _num(dc.get("loadgen"), 4), "-"),
        ("all processes CPU s / 1000 tokens", _num(_total(g), 4), _num(_total(d), 4), _fmt_ratio(_total(g), _total(d))),
        ("gateway RSS idle / peak (MB)",
         f"{_num(g.memory_mb.get('gateway_idle_rss'), 1)} / {_num(g.memory_mb.get('gateway_peak_rss'), 1)}", "-", "-"),
        ("streams open at once (max)", str(g.max_concurrent), str(d.max_concurrent), "-"),
    ]


def _total(run: RunResult) -> float | None:
    values = [v for k, v in run.cpu_per_1k_tokens.items() if v is not None and not k.startswith("gateway_")]
    return sum(values) if values else None


def account_table(r: ScenarioResult) -> list[str]:
    """Every account when there are few; the spread across accounts when there are many."""
    g, d = r.gateway.accounts, r.direct.accounts
    names = sorted(set(g) | set(d), key=lambda n: (len(n), n))
    if not names:
        return []
    if len(names) <= 8:
        lines = ["| account | requests gw/direct | TTFT p50 gw/direct (ms) | TTFT p99 gw/direct (ms) | "
                 "gap p99 gw/direct (ms) | queue wait p50 gw/direct (ms) | tokens/s gw/direct | errors gw/direct |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n in names:
            a, b = g.get(n, Figures()), d.get(n, Figures())
            lines.append(
                f"| {n} | {a.requests}/{b.requests} | {_ms(a.ttft.get('p50'))}/{_ms(b.ttft.get('p50'))} | "
                f"{_ms(a.ttft.get('p99'))}/{_ms(b.ttft.get('p99'))} | {_ms(a.gap.get('p99'))}/{_ms(b.gap.get('p99'))} | "
                f"{_ms(a.queue_wait.get('p50'))}/{_ms(b.queue_wait.get('p50'))} | "
                f"{_num(a.tokens_per_s)}/{_num(b.tokens_per_s)} | {a.errors}/{b.errors} |")
        return lines + [""]
    lines = [f"Per account ({len(names)} accounts; min / median / max across accounts; full table in the JSON):", "",
             "| figure | gateway | direct |", "| --- | ---: | ---: |"]
    picks: tuple[tuple[str, Callable[[Figures], float | None]], ...] = (
        ("requests", lambda f: f.requests), ("TTFT p50 (ms)", lambda f: f.ttft.get("p50")),
        ("TTFT max (ms)", lambda f: f.ttft.get("max")), ("queue wait p50 (ms)", lambda f: f.queue_wait.get("p50")),
        ("tokens/s", lambda f: f.tokens_per_s),
        ("errors", lambda f: f.errors),
    )
    for title, pick in picks:
        lines.append(f"| {title} | {_spread([pick(f) for f in g.values()])} | {_spread([pick(f) for f in d.values()])} |")
    return lines + [""]


def _spread(values: list[float | None]) -> str:
    clean = sorted(v for v in values if v is not None)
    if not clean:
        return "-"
    mid = clean[len(clean) // 2]
    return " / ".join(f"{v:,.2f}".rstrip("0").rstrip(".") for v in (clean[0], mid, clean[-1]))


def profile_table(name: str, profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"### Profile of the gateway in {name}", "", profile["error"], ""]
    total = profile["samples"] or 1
    lines = [f"### Profile of the gateway in {name} ({profile['samples']} py-spy samples)", "",
             f"Worker threads (proof of work): {profile['workers']} ({100 * profile['workers'] / total:.1f} %); "
             f"event loop with no Python frame on top (uvloop, syscalls): {profile['loop_below_python']} "
             f"({100 * profile['loop_below_python'] / total:.1f} %); the rest is the loop's Python code:", "",
             "| own samples | % | function |", "| ---: | ---: | --- |"]
    lines += [f"| {n} | {pct} | `{fn}` |" for fn, n, pct in profile["own"]]
    lines += ["", "| inclusive samples | % | function |", "| ---: | ---: | --- |"]
    lines += [f"| {n} | {pct} | `{fn}` |" for fn, n, pct in profile["inclusive"]]
    return lines + [""]


def console_summary(results: list[ScenarioResult], verdicts_: list[Verdict]) -> str:
    lines = [f"{'scenario':<18} {'tok/s gw':>10} {'direct':>10} {'ratio':>6} {'TTFT p50 gw':>12} {'direct':>8} "
             f"{'p99 gw':>8} {'direct':>8} {'gw CPU/1k':>10} {'gw RSS':>7} {'err':>4} {'exact':>11}"]
    for r in results:
        g, d = r.gateway.overall, r.direct.overall
        lines.append(
            f"{r.scenario.name:<18} {g.tokens_per_s:>10,.0f} {d.tokens_per_s:>10,.0f} "
            f"{_fmt_ratio(g.tokens_per_s, d.tokens_per_s):>6} {_ms(g.ttft['p50']):>12} {_ms(d.ttft['p50']):>8} "
            f"{_ms(g.ttft['p99']):>8} {_ms(d.ttft['p99']):>8} "
            f"{_num(r.gateway.cpu_per_1k_tokens.get('gateway'), 4):>10} "
            f"{_num(r.gateway.memory_mb.get('gateway_peak_rss'), 1):>7} {g.errors + d.errors:>4} "
            f"{g.exact + d.exact:>5}/{g.requests + d.requests:<5}")
    lines.append("")
    lines += [f"{v.word:<8} {v.target}: {v.measured} (goal {v.goal})" for v in verdicts_]
    return "\n".join(lines)


# --- chart ------------------------------------------------------------------------------


def _scale(ax: Any, values: list[float]) -> None:
    """Linear when the values span less than a decade, else log (symlog: gaps of 0 ms exist)."""
    positive = [v for v in values if v > 0]
    if positive and min(values) > 0 and max(positive) / min(positive) < 10:
        return
    ax.set_xscale("symlog", linthresh=0.1)


def chart(path: Path, results: list[ScenarioResult]) -> str | None:
    """TTFT and inter-token gap distributions, gateway against direct; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = len(results)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.3 * rows + 0.6), squeeze=False)
    for row, r in zip(axes, results):
        for ax, key, title in ((row[0], "ttft_ms", "time to first token (ms)"),
                               (row[1], "gap_ms", "inter-token gap (ms)")):
            for run, style in ((r.direct, "--"), (r.gateway, "-")):
                values = run.distributions.get(key) or []
                if values:
                    ys = [i / (len(values) - 1) for i in range(len(values))] if len(values) > 1 else [1.0]
                    ax.plot(values, ys, style, label=run.kind, linewidth=1.4)
            _scale(ax, [v for run in (r.direct, r.gateway) for v in run.distributions.get(key) or []])
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{r.scenario.name}: {title}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.set_ylabel("fraction ≤ x", fontsize=8)
        row[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("ds2a: gateway (solid) vs the simulator alone (dashed), cumulative distributions", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.3 * rows + 0.6)))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def redis_side_by_side(results: list[ScenarioResult]) -> list[str]:
    """``--redis``: each scenario's gateway with the embedded pool beside the Redis-shared one."""
    by_name = {r.scenario.name: r for r in results}
    lines = [
        "## Embedded pool vs Redis-shared pool (gateway runs)",
        "",
        "| scenario | TTFT p50 embedded / redis (ms) | added p50 | TTFT p99 embedded / redis (ms) "
        "| tokens/s embedded / redis | gateway CPU s/1k tokens embedded / redis | parallel violations |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if not r.scenario.redis:
            continue
        base = by_name.get(r.scenario.name.removesuffix("+redis"))
        if base is None:
            continue
        e, s = base.gateway.overall, r.gateway.overall
        added = None if e.ttft.get("p50") is None or s.ttft.get("p50") is None else s.ttft["p50"] - e.ttft["p50"]
        violations = r.gateway.sim_counters.get("parallel_violations")
        lines.append(
            f"| {base.scenario.name} | {_ms(e.ttft.get('p50'))} / {_ms(s.ttft.get('p50'))} | "
            f"{'-' if added is None else f'{added:+.2f}'} | {_ms(e.ttft.get('p99'))} / {_ms(s.ttft.get('p99'))} | "
            f"{_num(e.tokens_per_s)} / {_num(s.tokens_per_s)} | "
            f"{_num(base.gateway.cpu_per_1k_tokens.get('gateway'), 4)} / {_num(r.gateway.cpu_per_1k_tokens.get('gateway'), 4)} | "
            f"{violations} |"
        )
    return lines
