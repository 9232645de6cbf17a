"""One generation per upstream account, whatever token or route reaches it (issue 8, defect 2).

A caller may send a raw DeepSeek token as its bearer. When that token belongs to a
pool account (configured as ``{"token": ...}``, or obtained by the pool's own login)
it is the same upstream account: the caller waits for that account's lease instead of
running beside it. Real sockets, the simulator counts generations per account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from ds2a.sim import SimConfig, expected
from harness import Stack
from test_pool_sim import (
    Call,
    assert_no_generation_running,
    assert_one_generation_per_account,
    chat,
    counters,
    inject,
    on_loop,
    request,
    settled,
    until,
)

TOKEN = "pool-account-token-0123456789abcdef"


async def both_at_once(stack: Stack, first_key: str, second_key: str, *, stream: bool = True) -> None:
    """Two answers on the two routes to one account: the second starts while the first streams."""
    first = await Call(stack, chat("first, a long one", stream=True, model="deepseek-reasoner"), key=first_key).open()
    await first.content_events(2)  # the first is generating upstream now
    second = asyncio.create_task(request(stack, chat("second", stream=stream), key=second_key))
    one = await first.reply()
    two = await second
    assert one.answer()[2] == "stop"
    assert two.answer() == ("", expected("second", False, False, stack.sim_config).answer, "stop")


@pytest.mark.parametrize("order", ["pool first", "direct first"])
async def test_a_configured_token_used_as_bearer_waits_for_the_pool_lease(
    make_stack: Callable[..., Stack], order: str
) -> None:
    stack = make_stack(
        accounts=0,
        sim=SimConfig(tokens=(TOKEN,), delay=0.003),
        config={"accounts": [{"token": TOKEN, "name": "shared"}]},
    )
    await until(stack, settled(stack), "a ready ticket")
    keys = ("sk-test-key", TOKEN) if order == "pool first" else (TOKEN, "sk-test-key")
    await both_at_once(stack, *keys)
    await assert_one_generation_per_account(stack)
    await assert_no_generation_running(stack)


async def test_a_token_from_the_pools_own_login_used_as_bearer_waits_for_the_pool_lease(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(accounts=1, sim=SimConfig(delay=0.003))
    await until(stack, settled(stack), "a ready ticket (the pool has logged in)")
    token = await on_loop(stack, lambda: stack.gateway.pool.accounts[0].token)
    assert token and (await counters(stack))["logins"] == 1
    await both_at_once(stack, "sk-test-key", token, stream=False)
    await both_at_once(stack, token, "sk-test-key")
    await assert_one_generation_per_account(stack)
    await assert_no_generation_running(stack)


async def test_the_rule_holds_through_a_continuation_and_a_stop(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        accounts=0,
        sim=SimConfig(tokens=(TOKEN,), delay=0.003),
        config={"accounts": [{"token": TOKEN}]},
    )
    await until(stack, settled(stack), "a ready ticket")
    inject(stack, "incomplete", count=1, tokens=10)  # the pool's answer is cut once and continued
    await both_at_once(stack, "sk-test-key", TOKEN)
    assert (await counters(stack))["continues"] == 1
    # The direct caller goes away mid-answer: the pool waits for the stop, not beside it.
    call = await Call(stack, chat("abandoned", stream=True, model="deepseek-reasoner"), key=TOKEN).open()
    await call.content_events(2)
    pooled = asyncio.create_task(request(stack, chat("after the stop")))
    call.kill()
    assert (await pooled).status == 200
    await assert_one_generation_per_account(stack)
    await assert_no_generation_running(stack)


async def test_many_callers_on_both_routes_never_overlap(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        accounts=0,
        sim=SimConfig(tokens=(TOKEN,), delay=0.001),
        config={"accounts": [{"token": TOKEN}]},
    )
    await until(stack, settled(stack), "a ready ticket")
    replies = await asyncio.gather(
        *(request(stack, chat(f"mixed {i}", stream=i % 2 == 0), key=TOKEN if i % 3 else "sk-test-key") for i in range(9))
    )
    assert [r.status for r in replies] == [200] * 9
    await assert_one_generation_per_account(stack)
    c = await counters(stack)
    assert c["completions"] == 9
