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

Drift of August-October 2026 (protocol doc §16), same mechanism:

=======================  ================================================  =================
fault                    effect                                            params
=======================  ================================================  =================
context_length_exceeded  ends CONTEXT_LENGTH_EXCEEDED after K tokens        tokens (0: before
                         (status and quasi_status)                         any text)
status_timeout           ends TIMEOUT after K tokens, likewise             tokens (0)
toast                    an error ``event: toast`` after K tokens (0:      tokens (0)
                         instead of the answer); the stream then stays
                         open ``toast_hold`` seconds before ``close``
invalid_pow              the in-stream ``{"code":40301,...}`` error        -
user_stop                stopped as by the web UI after K tokens: TIP      tokens (half)
                         fragment, INCOMPLETE, ``auto_resume: false``
stall                    after K SSE blocks, silence (no heartbeat either)  frames (4)
pause                    a quiet pause after the opening snapshot          seconds (3)
endless_block            after K SSE blocks, a block that never ends       frames (4)
                         (until the client goes away or stop_stream)
waf                      the next /api/v0 call of any kind is blocked by    mode (captcha)
                         the CDN/WAF (modes as ``SimConfig.waf``)
client_too_old           the next /api/v0 call answers 40005               -
banned / risk_device     the account's next login answers biz_code 10 / 11 -
muted_login              the account's next login succeeds, muted          seconds
=======================  ================================================  =================

Config switches (also ``POST /_sim/config``): ``heartbeat`` (streams promise
``x-ds-sse-heartbeat-timeout-secs`` and keep it with ``: `` comments), ``waf`` (every
/api/v0 call blocked: ``captcha`` 405, ``challenge`` 202, ``challenge_body`` 202 JSON,
``cloudflare`` 403, ``cloudflare_429`` 429, ``html`` 200 HTML), ``min_client_version``,
``clock_skew`` (the simulator's clock vs the host's: moves ``expire_at``),
``pow_reject_in_stream`` (a rejected PoW answer is the in-stream 40301; False: the older
JSON 40300), ``new_fragments``, ``device_check``, ``toast_hold``; at start only:
``banned`` and ``muted_at_login`` (logins).

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
- ``[[sim:context_length_exceeded]]`` / ``=K``, ``[[sim:status_timeout]]`` / ``=K``,
  ``[[sim:toast]]`` / ``=K``, ``[[sim:user_stop=K]]``, ``[[sim:stall=K]]``,
  ``[[sim:pause=S]]``, ``[[sim:endless_block=K]]``: as the faults above; ``[[sim:heartbeat=S]]``: this stream promises
  (and keeps) a heartbeat; ``[[sim:new_fragments]]``: the 2026-09 tool fragment types;
- ``[[sim:invalid_pow]]`` / ``=N``: the first N completions with this exact prompt get the
  in-stream 40301, later ones are answered (so a gateway's retry can succeed);
- ``[[sim:waf]]`` / ``[[sim:waf=MODE]]``: this completion is blocked by the CDN/WAF;
  ``[[sim:client_too_old]]``: answered 40005;
- ``[[sim:banned]]``, ``[[sim:risk_device]]``, ``[[sim:muted_login=S]]``: the account's
  token dies (40003) and its next login answers biz_code 10 / biz_code 11 / muted;
- ``[[sim:tokens=N]]``, ``[[sim:thinking_tokens=N]]``: answer / reasoning length
  (they change the text, and ``expected()`` honours them);
- ``[[sim:chunk=N]]``, ``[[sim:delay=S]]``, ``[[sim:first_delay=S]]``: framing and pace;
- ``[[sim:tool_mess=a,b]]``, ``[[sim:tool_mess_stubborn]]``, ``[[sim:args={…}]]``: how a
  prompt in ds2a's tool/JSON convention is answered (``ds2a.sim.tools``).

Where the protocol is silent the simulator decides (each marked in the code):
the framing of the in-stream 40301 for a wrong/expired/replayed PoW (the error object
as the only frame; with ``pow_reject_in_stream=False`` the older JSON 40300 with the
message ``INVALID_POW_RESPONSE``), the envelopes of 40005 and of login biz_codes 10 and
11, the WAF's HTML, the shapes of the 2026-09 tool fragments (those of the captured
search and page fragments), a ban outranking the device check at login,
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
