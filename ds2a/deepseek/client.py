"""The DeepSeek web API client (protocol doc §2-§6, §8, §10).

One ``DeepSeekClient`` per process owns one ``aiohttp.ClientSession`` whose
connector pools keep-alive connections for every account together. Non-streaming
calls return the envelope's ``biz_data`` or raise ``DeepSeekError``; completion and
continue return a ``Completion`` that hands out raw body chunks for the stream
parser.

Timeouts: non-streaming calls run under aiohttp's ``total`` timeout. A stream's head
must arrive within ``first_byte_timeout`` of sending (aiohttp's ``sock_read``); after
that a watchdog per stream (see ``Completion``) allows ``first_byte_timeout`` for the
first chunk and ``idle_timeout`` between chunks, at no per-read cost beyond reading a
clock.

A stream whose head carries ``x-ds-sse-heartbeat-timeout-secs`` (§16.2) promises a
frame at least that often; its watchdog then declares it dead after
``heartbeat_factor`` promised periods of silence instead of the generic idle timeout.

Blocks by the CDN/WAF in front of DeepSeek (§16.4: AWS WAF captcha or challenge,
Cloudflare challenge, or any HTML page where the API answers JSON or SSE) are
``ErrorKind.BLOCKED``, never an authentication failure: logging in again cannot help.

Memory: a non-streaming answer is read up to ``MAX_BODY_BYTES``; a stream is handed
out read by read (the parser bounds what it keeps).

Secrets: tokens travel only in the ``Authorization`` header and passwords only in
the login body; error messages are built from upstream texts and exception
summaries, and are scrubbed of the call's secret before they leave this module.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from yarl import URL

from ds2a.config import DeepSeekConfig
from ds2a.deepseek.errors import (
    CLIENT_VERSION_TOO_LOW,
    DeepSeekError,
    ErrorKind,
    classify_envelope,
    operator_message,
)
from ds2a.deepseek.pow import COMPLETION_PATH, Challenge, PowError

log = logging.getLogger(__name__)

LOGIN_PATH = "/api/v0/users/login"
CURRENT_USER_PATH = "/api/v0/users/current"
CREATE_SESSION_PATH = "/api/v0/chat_session/create"
DELETE_SESSION_PATH = "/api/v0/chat_session/delete"
CHALLENGE_PATH = "/api/v0/chat/create_pow_challenge"
CONTINUE_PATH = "/api/v0/chat/continue"
STOP_PATH = "/api/v0/chat/stop_stream"
PATHS = (
    LOGIN_PATH,
    CURRENT_USER_PATH,
    CREATE_SESSION_PATH,
    DELETE_SESSION_PATH,
    CHALLENGE_PATH,
    COMPLETION_PATH,
    CONTINUE_PATH,
    STOP_PATH,
)

# Shorter than typical server-side keep-alive windows, so a pooled connection is
# dropped by us before the upstream closes it under a request we cannot replay (POST).
KEEPALIVE_TIMEOUT = 15.0
SNIPPET_CHARS = 200  # how much of an unexpected body an error message quotes
JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream"
HTML_CONTENT_TYPE = "text/html"
# Envelopes are a few KB (a login, a challenge); an answer beyond this is not one.
MAX_BODY_BYTES = 4 * 1024 * 1024
HEARTBEAT_HEADER = "x-ds-sse-heartbeat-timeout-secs"
MIN_HEARTBEAT_LIMIT = 2.0  # seconds; a silly promise must not cut healthy streams


def host_timezone_offset() -> int:
    """Seconds east of UTC in this host's zone now (the web client's x-client-timezone-offset)."""
    offset = datetime.datetime.now().astimezone().utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def personality_headers(config: DeepSeekConfig) -> dict[str, str]:
    """Every header that makes ds2a look like the web client (§16.2), from config alone."""
    offset = config.timezone_offset if config.timezone_offset is not None else host_timezone_offset()
    headers = {
        "User-Agent": config.user_agent,
        "Accept": "*/*",
        "x-client-platform": config.client_platform,
        "x-client-version": config.client_version,
        "x-client-locale": config.client_locale,
        "x-client-bundle-id": config.client_bundle_id,
        "x-client-timezone-offset": str(offset),
    }
    headers.update(config.extra_headers)
    return {name: value for name, value in headers.items() if value}


class Gate(Protocol):
    """What the client asks before and tells after every call (ds2a.pool.gate implements it):
    a CDN/WAF block refuses the whole host, so nothing is sent while one lasts."""

    def admit(self) -> None:
        """Return to let the call go out; raise DeepSeekError(BLOCKED) while blocked."""

    def blocked(self, error: DeepSeekError) -> None:
        """The call met a block."""

    def passed(self) -> None:
        """The call got an answer that was not a block."""


class LoginToken(str):
    """The Bearer token a login returned, and what the login said about the account:
    a login may succeed for a muted user (``user.chat.is_muted``, §16.3)."""

    muted: bool = False
    mute_until: float | None = None

    @classmethod
    def of(cls, token: str, user: dict[str, Any]) -> LoginToken:
        login = cls(token)
        chat = user.get("chat")
        if isinstance(chat, dict) and chat.get("is_muted"):
            login.muted = True
            until = chat.get("mute_until")
            login.mute_until = float(until) if isinstance(until, (int, float)) and not isinstance(until, bool) else None
        return login


def blocked_by(status: int, headers: Mapping[str, str], content_type: str, raw: bytes) -> str | None:
    """How the CDN/WAF in front of DeepSeek refused this request, or None (§2.1, §16.4)."""
    waf = headers.get("x-amzn-waf-action")
    if waf:
        return f"AWS WAF {waf}, HTTP {status}"
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return f"Cloudflare challenge, HTTP {status}"
    if status == 202:
        return "a challenge page, HTTP 202"  # the API never answers 202: that is the WAF's interstitial
    if status < 500 and _is_html(content_type, raw):
        # (A 5xx page is an outage, not a block: it stays UNAVAILABLE.)
        return f"an HTML page, HTTP {status}"
    return None


def _is_html(content_type: str, raw: bytes) -> bool:
    if content_type == HTML_CONTENT_TYPE:
        return True
    head = raw[:64].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _blocked_error(what: str, how: str, status: int, headers: Mapping[str, str]) -> DeepSeekError:
    return DeepSeekError(
        ErrorKind.BLOCKED,
        f"{what}: DeepSeek's CDN/WAF is blocking requests from this host ({how}); it asks for a browser "
        "challenge or captcha, which ds2a does not solve",
        http_status=status,
        retry_after=_retry_after(headers),
    )


def _heartbeat(headers: Mapping[str, str]) -> float | None:
    """The heartbeat period a stream's head promises, if it is a sensible number."""
    raw = headers.get(HEARTBEAT_HEADER)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _snippet(raw: bytes) -> str:
    text = raw[:SNIPPET_CHARS].decode("utf-8", "replace").strip()
    return text + ("…" if len(raw) > SNIPPET_CHARS else "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or DeepSeek's ``x-fetch-after-sec``."""
    for name in ("Retry-After", "x-fetch-after-sec"):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
            continue
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


def _transport_error(exc: BaseException, what: str) -> DeepSeekError:
    """Kind and summary of an aiohttp/socket failure; the exception object itself is dropped
    because aiohttp's request info (with the Authorization header) hangs off some of them."""
    summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        return DeepSeekError(ErrorKind.TIMEOUT, f"{what} timed out ({summary})")
    if isinstance(exc, aiohttp.ClientResponseError):
        return DeepSeekError(ErrorKind.PROTOCOL, f"{what}: unreadable HTTP response ({summary})")
    return DeepSeekError(ErrorKind.UNAVAILABLE, f"{what}: connection failed ({summary})")


def _detail_text(detail: Any) -> str:
    """FastAPI 422 detail without the ``input`` echo, which can contain the password."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                loc_text = ".".join(map(str, loc)) if isinstance(loc, (list, tuple)) else str(loc)
                parts.append(f"{loc_text}: {item.get('msg', '')}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _parse_json(raw: bytes, content_type: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise DeepSeekError(
            ErrorKind.PROTOCOL, f"{what}: expected JSON, got {content_type or 'no content type'}: {_snippet(raw)!r}"
        ) from None


def _envelope_data(envelope: Any, what: str, *, login: bool, retry_after: float | None) -> Any:
    """``biz_data`` of a successful two-level envelope (§2.1), else the classified error."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("code"), int):
        raise DeepSeekError(ErrorKind.PROTOCOL, f"{what}: not a DeepSeek envelope: {str(envelope)[:SNIPPET_CHARS]!r}")
    code: int = envelope["code"]
    data = envelope.get("data")
    biz_code = data.get("biz_code") if isinstance(data, dict) else None
    biz_data = data.get("biz_data") if isinstance(data, dict) else None
    if code == 0 and biz_code in (0, None):
        if not isinstance(data, dict):
            raise DeepSeekError(ErrorKind.PROTOCOL, f"{what}: success envelope without data")
        return biz_data
    message = (data.get("biz_msg") if isinstance(data, dict) and biz_code else None) or envelope.get("msg") or ""
    message = str(message) or f"{what} failed (code {code}, biz_code {biz_code})"
    kind = classify_envelope(code, biz_code, message, login=login)
    message = operator_message(code, biz_code, message, login=login)
    mute_until = biz_data.get("mute_until") if isinstance(biz_data, dict) else None
    raise DeepSeekError(
        kind,
        message,
        code=code,
        biz_code=biz_code,
        mute_until=float(mute_until) if isinstance(mute_until, (int, float)) else None,
        retry_after=retry_after,
    )


def _http_error(status: int, headers: Mapping[str, str], content_type: str, raw: bytes, what: str) -> DeepSeekError:
    """A non-200 answer: a CDN/WAF block, else the status decides the kind and the body
    (if JSON) supplies the words."""
    how = blocked_by(status, headers, content_type, raw)
    if how is not None:
        return _blocked_error(what, how, status, headers)
    upstream = ""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        if "detail" in body:
            upstream = _detail_text(body["detail"])
        else:
            data = body.get("data")
            upstream = str((data.get("biz_msg") if isinstance(data, dict) else None) or body.get("msg") or "")
    elif raw:
        upstream = _snippet(raw)
    message = f"{what}: HTTP {status}" + (f": {upstream}" if upstream else "")
    if status == 429:
        kind = ErrorKind.RATE_LIMITED
    elif status >= 500:
        kind = ErrorKind.UNAVAILABLE
    elif status in (401, 403):
        kind = ErrorKind.AUTH
    else:
        kind = ErrorKind.UPSTREAM
    return DeepSeekError(kind, message, http_status=status, retry_after=_retry_after(headers))


async def _read_bounded(response: aiohttp.ClientResponse, what: str) -> bytes:
    """The whole body of a non-streaming answer, refusing one larger than any envelope."""
    length = response.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise DeepSeekError(ErrorKind.PROTOCOL, f"{what}: a {length}-byte answer where an envelope was expected")
    parts: list[bytes] = []
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DeepSeekError(ErrorKind.PROTOCOL, f"{what}: an answer larger than {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _device_id(login: str) -> str:
    """Stable per account, so each account looks like one device across restarts."""
    return hashlib.sha256(b"ds2a-device:" + login.encode()).hexdigest()[:32]


def _resume_only_when_paused(protocol: Any) -> None:
    """Skip aiohttp's resume_reading() on every read when reading was never paused.

    aiohttp's StreamReader calls protocol.resume_reading() after each read whatever the
    state, and that re-enters data_received(b"") and the HTTP parser: a few microseconds
    per upstream read, on the hot path, for nothing. When aiohttp did pause reading
    (backpressure), the original runs unchanged. Applied per connection and only if the
    attributes it relies on exist, so another aiohttp version degrades to its own code.
    """
    original = getattr(protocol, "resume_reading", None)
    if original is None or getattr(original, "resumes_only_when_paused", False):
        return  # not aiohttp's shape, or a kept-alive connection already guarded
    if not hasattr(protocol, "_reading_paused") or not hasattr(protocol, "_buffer_paused"):
        return

    def resume_reading(resume_parser: bool = True) -> None:
        if protocol._reading_paused or protocol._buffer_paused:
            original(resume_parser)

    resume_reading.resumes_only_when_paused = True  # type: ignore[attr-defined]
    protocol.resume_reading = resume_reading


class Completion:
    """One streaming answer: raw body chunks as they arrive.

    ``read()`` is the gateway's hot path: one awaited ``readany`` per network read.
    Silence is bounded by a watchdog that wakes once per timeout period, not by a timer
    re-armed on every read (aiohttp's ``sock_read`` costs a timer cancel and a new
    timer per network read). It counts only time spent waiting on the upstream, so a
    client that reads slowly (we are then not reading either) never looks like a
    silent upstream: first ``first_byte_timeout`` for the first chunk, then
    ``idle_timeout`` between chunks.
    """

    __slots__ = (
        "_response", "_readany", "_time", "_limit", "_idle_timeout", "_waiting_since",
        "_watchdog", "_timed_out", "_waiting_first", "trace_id", "heartbeat",
    )

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        first_byte_timeout: float,
        idle_timeout: float,
        heartbeat_factor: float = 3.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._response = response
        self._readany = response.content.readany
        self._time = loop.time
        # A promised heartbeat (§16.2) bounds every silence from here on, the first included:
        # long thinking is quiet, but the server keeps sending heartbeats through it.
        self.heartbeat = _heartbeat(response.headers)
        if self.heartbeat is not None:
            limit = max(self.heartbeat * heartbeat_factor, MIN_HEARTBEAT_LIMIT)
            first_byte_timeout = min(first_byte_timeout, limit)
            idle_timeout = min(idle_timeout, limit)
        self._limit = first_byte_timeout
        self._idle_timeout = idle_timeout
        self._waiting_since: float | None = None  # None while we are not waiting on the upstream
        self._timed_out = False
        self._waiting_first = True
        self._watchdog: asyncio.TimerHandle | None = loop.call_later(first_byte_timeout, self._check_silence)
        self.trace_id: str | None = response.headers.get("x-ds-trace-id")
        # aiohttp's sock_read timer bounded the wait for the head; switch it off so it is not
        # re-armed on every read (the watchdog above takes over).
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is not None:
            protocol.read_timeout = None
            protocol.start_timeout()  # cancels the timer already running
            _resume_only_when_paused(protocol)

    async def read(self) -> bytes:
        """Next body chunk, ``b""`` at the end of the body."""
        self._waiting_since = self._time()
        try:
            chunk = await self._readany()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._failed(exc) from None
        self._waiting_since = None
        if self._waiting_first:
            self._first_chunk_arrived()
        if not chunk:
            self._stop_watchdog()
        return chunk

    def _first_chunk_arrived(self) -> None:
        # Once per stream: from the first-byte limit to the idle limit, which may be shorter.
        self._waiting_first = False
        self._limit = self._idle_timeout
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = asyncio.get_running_loop().call_later(self._limit, self._check_silence)

    def _check_silence(self) -> None:
        since = self._waiting_since
        now = self._time()
        if since is not None and now - since >= self._limit:
            self._timed_out = True
            self._watchdog = None
            # Wakes the pending readany with an error; closing drops the connection.
            self._response.content.set_exception(asyncio.TimeoutError())
            self._response.close()
            return
        due = (since if since is not None else now) + self._limit
        self._watchdog = asyncio.get_running_loop().call_at(due, self._check_silence)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _failed(self, exc: BaseException) -> DeepSeekError:
        """Stream failures carry only our words and aiohttp's summary: no header ever gets here."""
        self._stop_watchdog()
        self._response.close()
        if self._waiting_first:
            what = "stream: waiting for the first byte"
        else:
            what = "stream: waiting for the next chunk"
        if self._timed_out or isinstance(exc, asyncio.TimeoutError):
            promise = f" (it promised a heartbeat every {self.heartbeat:g} s)" if self.heartbeat else ""
            error = DeepSeekError(ErrorKind.TIMEOUT, f"{what}: upstream silent for too long{promise}")
        else:
            # Whatever breaks after the head is the connection's fault, not a bad answer.
            error = DeepSeekError(ErrorKind.UNAVAILABLE, _transport_error(exc, what).message)
        log.debug("completion stream failed: %s (%s)", error.kind.value, error.message)
        return error

    def release(self) -> None:
        """Hand the connection back; aiohttp closes it instead if the body was not read to the end."""
        self._stop_watchdog()
        self._response.release()

    def close(self) -> None:
        """Abort: drop the connection, which also ends the upstream's generation stream."""
        self._stop_watchdog()
        self._response.close()

    async def __aenter__(self) -> Completion:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()


class DeepSeekClient:
    """All calls to chat.deepseek.com, over one shared connection pool."""

    def __init__(self, config: DeepSeekConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        base = config.base_url.rstrip("/")
        self._urls = {path: URL(base + path) for path in PATHS}
        self._headers = personality_headers(config)
        self._told_version = False  # 40005 is logged once, not once per call
        self.upstream_gate: Gate | None = None  # set by the pool: one backoff for the whole upstream
        self._call_timeout = aiohttp.ClientTimeout(total=config.request_timeout, connect=config.connect_timeout)
        # total=None: a stream may run for many minutes. Until the head arrives aiohttp's
        # sock_read bounds the wait for it (and _stream_open_limit what sock_read does not
        # cover: connecting, writing a body the upstream does not read); from the head on,
        # Completion's watchdog bounds each silence.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_read=config.first_byte_timeout
        )
        self._stream_open_limit = config.connect_timeout + config.first_byte_timeout

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._config.pool_limit,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._call_timeout,
            # Accounts share this session: cookies one account is given must not ride
            # along on another account's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> DeepSeekClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("DeepSeekClient is not started: await client.start() first")
        return self._session

    # --- calls ---------------------------------------------------------------------

    async def login(
        self,
        *,
        email: str | None = None,
        mobile: str | None = None,
        area_code: str | None = None,
        password: str,
    ) -> LoginToken:
        """Password login (§3.1); returns the Bearer token (with the account's mute state,
        §16.3). With both logins given, e-mail wins."""
        if not email and not mobile:
            raise ValueError("login needs email= or mobile=")
        body: dict[str, Any]
        if email:
            body = {"email": email}
        else:
            body = {"mobile": mobile, "area_code": area_code}
        body.update(
            password=password,
            device_id=_device_id(email or mobile or ""),
            os=self._config.client_platform,
        )
        biz_data = await self._call("POST", LOGIN_PATH, None, body, secret=password, login=True)
        user = biz_data.get("user") if isinstance(biz_data, dict) else None
        token = user.get("token") if isinstance(user, dict) else None
        if not isinstance(token, str) or not token:
            raise DeepSeekError(ErrorKind.PROTOCOL, "login: answer without biz_data.user.token")
        assert isinstance(user, dict)
        return LoginToken.of(token, user)

    async def current_user(self, token: str) -> dict[str, Any]:
        """The account behind a token (§3.3); a cheap token check."""
        biz_data = await self._call("GET", CURRENT_USER_PATH, token, None)
        if not isinstance(biz_data, dict):
            raise DeepSeekError(ErrorKind.PROTOCOL, "users/current: answer without biz_data")
        return biz_data

    async def create_session(self, token: str) -> str:
        """A new chat session id (§4.1); both known answer shapes are accepted."""
        biz_data = await self._call("POST", CREATE_SESSION_PATH, token, {})
        if isinstance(biz_data, dict):
            chat_session = biz_data.get("chat_session")
            session_id = chat_session.get("id") if isinstance(chat_session, dict) else biz_data.get("id")
            if isinstance(session_id, str) and session_id:
                return session_id
        raise DeepSeekError(ErrorKind.PROTOCOL, "chat_session/create: answer without a session id")

    async def delete_session(self, token: str, session_id: str) -> None:
        await self._call("POST", DELETE_SESSION_PATH, token, {"chat_session_id": session_id})

    async def create_pow_challenge(self, token: str, target_path: str = COMPLETION_PATH) -> Challenge:
        """A proof-of-work challenge for ``target_path`` (§5.1); refuses unknown algorithms."""
        biz_data = await self._call("POST", CHALLENGE_PATH, token, {"target_path": target_path})
        challenge = biz_data.get("challenge") if isinstance(biz_data, dict) else None
        if not isinstance(challenge, dict):
            raise DeepSeekError(ErrorKind.PROTOCOL, "create_pow_challenge: answer without biz_data.challenge")
        try:
            return Challenge.from_json(challenge)
        except PowError as exc:
            raise DeepSeekError(ErrorKind.POW, str(exc)) from None

    async def completion(
        self,
        token: str,
        *,
        session_id: str,
        pow_response: str,
        prompt: str,
        thinking: bool,
        search: bool,
        parent_message_id: int | None = None,
        ref_file_ids: Iterable[str] = (),
        model_type: str | None = None,
    ) -> Completion:
        """Start a generation (§6); the answer streams through the returned ``Completion``.

        ``model_type``: the model's own (§12); None sends ``deepseek.model_type``."""
        body = {
            "chat_session_id": session_id,
            "parent_message_id": parent_message_id,
            "model_type": model_type or self._config.model_type,
            "prompt": prompt,
            "ref_file_ids": list(ref_file_ids),
            "thinking_enabled": thinking,
            "search_enabled": search,
            "preempt": False,
        }
        return await self._open_stream(COMPLETION_PATH, token, body, {"x-ds-pow-response": pow_response})

    async def continue_stream(self, token: str, *, session_id: str, message_id: int) -> Completion:
        """Resume an INCOMPLETE answer (§8); sent without PoW, as the web client does."""
        body = {"chat_session_id": session_id, "message_id": message_id, "fallback_to_resume": True}
        return await self._open_stream(CONTINUE_PATH, token, body, None)

    async def stop_stream(self, token: str, *, session_id: str, message_id: int) -> None:
        await self._call("POST", STOP_PATH, token, {"chat_session_id": session_id, "message_id": message_id})

    # --- plumbing ------------------------------------------------------------------

    @staticmethod
    def _call_headers(token: str | None, with_body: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if with_body:
            headers["Content-Type"] = JSON_CONTENT_TYPE
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        token: str | None,
        body: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        login: bool = False,
    ) -> Any:
        """One non-streaming call: ``biz_data`` of a successful envelope, else ``DeepSeekError``."""
        what = path.removeprefix("/api/v0/")
        headers = self._call_headers(token, body is not None)
        data = _dumps(body) if body is not None else None
        responded = False
        try:
            self._admit()
            try:
                async with self.session.request(
                    method, self._urls[path], headers=headers, data=data, allow_redirects=False
                ) as response:
                    raw = await _read_bounded(response, what)
                    status, resp_headers, content_type = response.status, response.headers, response.content_type
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise _transport_error(exc, what) from None
            responded = True
            log.debug("%s %s -> HTTP %s", method, what, status)
            if status != 200:
                raise _http_error(status, resp_headers, content_type, raw, what)
            how = blocked_by(status, resp_headers, content_type, raw)
            if how is not None:
                raise _blocked_error(what, how, status, resp_headers)
            envelope = _parse_json(raw, content_type, what)
            result = _envelope_data(envelope, what, login=login, retry_after=_retry_after(resp_headers))
        except DeepSeekError as error:
            self._observe(error, responded)
            raise self._scrubbed(error, what, token, secret) from None
        self._observe(None, True)
        return result

    async def _open_stream(
        self, path: str, token: str, body: Mapping[str, Any], extra: Mapping[str, str] | None
    ) -> Completion:
        what = path.removeprefix("/api/v0/")
        headers = self._call_headers(token, True)
        if extra:
            headers.update(extra)
        responded = False
        try:
            self._admit()
            response = await self._send_stream(path, headers, _dumps(body), what)
            responded = True
            try:
                completion = await self._stream_or_error(response, what)
            except BaseException:
                response.close()
                raise
        except DeepSeekError as error:
            self._observe(error, responded)
            raise self._scrubbed(error, what, token, None) from None
        self._observe(None, True)
        return completion

    def _admit(self) -> None:
        if self.upstream_gate is not None:
            self.upstream_gate.admit()

    def _observe(self, error: DeepSeekError | None, responded: bool) -> None:
        """Tell the gate what the upstream's answer says about this host (nothing if none came)."""
        gate = self.upstream_gate
        if gate is None or not responded:
            return
        if error is not None and error.kind is ErrorKind.BLOCKED:
            gate.blocked(error)
        else:
            gate.passed()

    async def _send_stream(self, path: str, headers: dict[str, str], data: bytes, what: str) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self._stream_open_limit):
                return await self.session.post(
                    self._urls[path], headers=headers, data=data, timeout=self._stream_timeout, allow_redirects=False
                )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc, what) from None

    async def _stream_or_error(self, response: aiohttp.ClientResponse, what: str) -> Completion:
        """Check status and content type before anything is read as SSE (§2.1)."""
        status, content_type = response.status, response.content_type
        log.debug("POST %s -> HTTP %s %s", what, status, content_type)
        if status == 200 and content_type == SSE_CONTENT_TYPE:
            cfg = self._config
            return Completion(response, cfg.first_byte_timeout, cfg.idle_timeout, cfg.heartbeat_factor)
        try:
            raw = await _read_bounded(response, what)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc, what) from None
        if status != 200:
            raise _http_error(status, response.headers, content_type, raw, what)
        how = blocked_by(status, response.headers, content_type, raw)
        if how is not None:
            raise _blocked_error(what, how, status, response.headers)
        if content_type != JSON_CONTENT_TYPE:
            raise DeepSeekError(
                ErrorKind.PROTOCOL, f"{what}: expected {SSE_CONTENT_TYPE}, got {content_type or 'no content type'}"
            )
        envelope = _parse_json(raw, content_type, what)
        _envelope_data(envelope, what, login=False, retry_after=_retry_after(response.headers))
        raise DeepSeekError(ErrorKind.PROTOCOL, f"{what}: a success envelope instead of a stream")

    def _scrubbed(self, error: DeepSeekError, what: str, token: str | None, secret: str | None) -> DeepSeekError:
        message = _redact(error.message, (token, secret))
        if message != error.message:
            error.message = message
            error.args = (message,)
        log.debug("%s failed: %s (%s)", what, error.kind.value, error.message)
        if error.code == CLIENT_VERSION_TOO_LOW and not self._told_version:
            self._told_version = True  # every account would say the same: once is enough
            log.warning("%s (deepseek.client_version is %r)", error.message, self._config.client_version)
        return error
