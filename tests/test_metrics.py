"""GET /metrics: Prometheus text that prometheus_client's own parser reads, and counters that
move as requests run. Plus the JSON log formatter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from ds2a.logfmt import JsonFormatter
from ds2a.sim import SimConfig
from harness import KEY, Stack, http
from test_pool_sim import Call, assert_no_generation_running, chat, inject, request, settled, until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack, key: str | None = KEY) -> Samples:
    status, headers, body = http(stack, "GET", "/metrics", key=key)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


STABLE_NAMES = (
    "ds2a_time_to_first_token_seconds_count",
    "ds2a_queue_wait_seconds_count",
    "ds2a_upstream_setup_seconds_count",
    "ds2a_pow_solve_seconds_count",
    "ds2a_inflight_generations",
    "ds2a_queue_depth",
    "ds2a_failovers_total",
    "ds2a_client_disconnects_total",
)


async def test_metrics_parse_and_move_as_requests_run(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=2, sim=SimConfig(delay=0.002))
    await until(stack, settled(stack), "ready tickets")
    before = scrape(stack)
    names = {name for name, _ in before}
    for name in STABLE_NAMES:
        assert name in names, name
    assert value(before, "ds2a_accounts", state="ready") == 2
    assert value(before, "ds2a_pow_solve_seconds_count") >= 2  # the two prepared tickets

    ok = await request(stack, chat("one", stream=True, model="deepseek-reasoner"))
    assert ok.status == 200
    assert (await request(stack, chat("two"))).status == 200
    assert (await request(stack, {"model": "no-such-model", "messages": []})).status in (400, 404)
    inject(stack, "rate_limit")  # the next attempt fails over to the other account
    assert (await request(stack, chat("three"))).status == 200
    call = await Call(stack, chat("gone", stream=True, model="deepseek-reasoner")).open()
    await call.content_events(2)
    call.kill()
    await assert_no_generation_running(stack)

    after = scrape(stack)
    route = "chat_completions"
    assert value(after, "ds2a_requests_total", route=route, status="200") - value(
        before, "ds2a_requests_total", route=route, status="200"
    ) == 3
    errors = sum(v for (n, labels), v in after.items() if n == "ds2a_requests_total" and ("status", "200") not in labels
                 and ("status", "499") not in labels)
    assert errors >= 1, "the bad request is counted under its status"
    assert value(after, "ds2a_client_disconnects_total") == value(before, "ds2a_client_disconnects_total") + 1
    assert value(after, "ds2a_failovers_total") == value(before, "ds2a_failovers_total") + 1
    assert value(after, "ds2a_upstream_errors_total", kind="rate_limited") >= 1
    reasoning = value(after, "ds2a_tokens_relayed_total", kind="reasoning")
    answer = value(after, "ds2a_tokens_relayed_total", kind="answer")
    assert reasoning > 0 and answer > 0
    assert value(after, "ds2a_time_to_first_token_seconds_count") - value(
        before, "ds2a_time_to_first_token_seconds_count"
    ) == 4
    assert value(after, "ds2a_queue_wait_seconds_count") >= 5
    assert value(after, "ds2a_upstream_setup_seconds_count") >= 5
    assert value(after, "ds2a_inflight_generations") == 0 and value(after, "ds2a_queue_depth") == 0
    assert value(after, "ds2a_accounts", state="cooling") == 1  # the rate-limited one rests


def test_metrics_need_a_gateway_key_unless_public(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=1)
    assert http(stack, "GET", "/metrics", key=None)[0] == 401
    assert http(stack, "GET", "/metrics", key="a-direct-token-is-not-a-key")[0] == 401
    public = make_stack(accounts=1, config={"metrics": {"public": True}})
    assert "ds2a_queue_depth" in {n for n, _ in scrape(public, key=None)}


def test_json_log_lines_carry_every_extra_field() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ds2a.test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        record = {"request_id": "r-1", "status": 200, "ttft_ms": 41.5, "outcome": "ok", "client": ("1.2.3.4", 5)}
        logger.warning("access %s", "line", extra=record)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "access line" and first["level"] == "WARNING"
    assert {k: first[k] for k in ("request_id", "status", "ttft_ms", "outcome")} == {
        "request_id": "r-1", "status": 200, "ttft_ms": 41.5, "outcome": "ok"
    }
    assert first["client"] == ["1.2.3.4", 5] and "time" in first
    assert "ValueError: boom" in second["exception"]


def test_the_grafana_dashboard_reads_only_names_the_gateway_exports(make_stack: Callable[..., Stack]) -> None:
    import re

    from conftest import ROOT

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"ds2a_\w+", t["expr"])}
    stack = make_stack(accounts=1)
    text = http(stack, "GET", "/metrics")[2].decode()
    exported = {name for name, _ in scrape(stack)} | set(re.findall(r"^# HELP (\w+)", text, re.M))
    assert used and used <= exported, used - exported


def test_every_dialect_is_counted_by_its_route(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(accounts=1)
    before = scrape(stack)
    claude = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    assert http(stack, "POST", "/v1/messages", claude)[0] == 200
    assert http(stack, "POST", "/v1/responses", {"model": "deepseek-chat", "input": "hi"})[0] == 200
    assert http(stack, "GET", "/healthz")[0] == 200
    after = scrape(stack)
    for route in ("messages", "responses", "healthz"):
        assert value(after, "ds2a_requests_total", route=route, status="200") == value(
            before, "ds2a_requests_total", route=route, status="200"
        ) + 1, route
    assert value(after, "ds2a_time_to_first_token_seconds_count") == value(
        before, "ds2a_time_to_first_token_seconds_count"
    ) + 2, "both answers' first tokens"
    relayed = sum(v for (n, _), v in after.items() if n == "ds2a_tokens_relayed_total")
    assert relayed > sum(v for (n, _), v in before.items() if n == "ds2a_tokens_relayed_total")
