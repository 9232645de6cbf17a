"""A faithful DeepSeek web upstream (protocol doc: shared/docs/deepseek-web-protocol.md).

Used by the tests, the benchmarks (the upstream alone: the physical limit the gateway
is measured against) and the offline demo::

    sim = Simulator(SimConfig(answer_tokens=200))
    base_url = await sim.start(host="127.0.0.1", port=0)
    ...
    await sim.stop()

Or in another process: ``python -m ds2a.sim --port 8787`` prints its base URL, and
``/_sim/counters``, ``/_sim/requests``, ``/_sim/faults``, ``/_sim/reset``,
``/_sim/config``, ``/_sim/accounts``, ``/_sim/revoke`` drive it.

Streams follow the 2026 G3 captures byte for byte in shape; the text is a pure
function of the request, ``ds2a.sim.text.expected(prompt, thinking, search, config)``.

Faults (``sim.inject(name, account=None, count=1, **params)``; account = email,
mobile or token, None = any account; count < 0 = until reset):

================  ======================================================  =================
fault             effect                                                  params
================  ======================================================  =================
expired_token     token revoked at the account's next call -> 40003        -
rate_limit        ready + hint ``rate_limit_reached`` + close              -
input_too_long    ready + hint ``input_exceeds_limit`` + close             -
busy              ready + hint "A message is being generated..." + close   -
muted             biz_code 5 JSON body; the account stays muted            seconds
content_filter    streams, then the CONTENT_FILTER end (answer withdrawn)  -
incomplete        ends INCOMPLETE after K tokens; chat/continue resumes    tokens (half)
drop              TCP reset after K SSE blocks                             frames (8)
slow_first_byte   nothing at all (not even headers) for S seconds          seconds (3)
================  ======================================================  =================

Prompt directives, for end-to-end tests through a gateway that picks the account
itself; they fire on every request that carries them (a retry too), and do not
fire again on chat/continue:

- ``[[sim:rate_limit]]``, ``[[sim:input_too_long]]``, ``[[sim:busy]]``,
  ``[[sim:content_filter]]``: as the faults above;
- ``[[sim:muted]]`` / ``[[sim:muted=S]]``: mute the account for S seconds (default
  ``SimConfig.mute_seconds``);
- ``[[sim:incomplete]]`` / ``[[sim:incomplete=K]]``, ``[[sim:drop]]`` / ``[[sim:drop=K]]``,
  ``[[sim:slow_first_byte=S]]``: as the faults above;
- ``[[sim:expired_token]]``: revoke the token and answer 40003;
- ``[[sim:invalid_session]]``: answer the biz_code 1 "invalid chat session id" body;
- ``[[sim:tokens=N]]``, ``[[sim:thinking_tokens=N]]``: answer / reasoning length
  (they change the text, and ``expected()`` honours them);
- ``[[sim:chunk=N]]``, ``[[sim:delay=S]]``, ``[[sim:first_delay=S]]``: framing and pace;
- ``[[sim:tool_mess=a,b]]``, ``[[sim:tool_mess_stubborn]]``, ``[[sim:args={…}]]``: how a
  prompt in ds2a's tool/JSON convention is answered (``ds2a.sim.tools``).

Where the protocol is silent the simulator decides (each marked in the code):
the wording of 40300 for a wrong/expired/replayed PoW (``INVALID_POW_RESPONSE``),
the framing of the busy error (ready, hint with ``finish_reason: null``, close with
``click_behavior: "retry"``), refused turns not using up message ids, continuing a
message that is not INCOMPLETE (biz_code 26 "invalid message id"), a client
disconnect ending the generation (status INCOMPLETE, resumable), and the search
shape without thinking (TOOL_SEARCH fragments, then RESPONSE; no TOOL_OPEN).
"""

from ds2a.sim.app import ReceivedRequest, Simulator
from ds2a.sim.config import SimConfig
from ds2a.sim.counters import Counters
from ds2a.sim.text import Citation, Expected, expected

__all__ = ["Citation", "Counters", "Expected", "ReceivedRequest", "SimConfig", "Simulator", "expected"]
