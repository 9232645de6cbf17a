"""Where each request message ends, decided before h11 sees a byte of it (RFC 9112 §2, §5, §6, §7).

Request smuggling lives in the gaps between two parsers' ideas of where a message
ends. So the core hands h11 exactly one message at a time: first the head up to its
blank line, then exactly the body its framing announces, never a byte of the next
request. The rules here are a strict subset of what h11 accepts (CRLF line endings
only, no obsolete line folding, chunk extensions only as the RFC's grammar spells
them, no whitespace around chunk sizes), so whatever passes here, h11 frames the
same way; whatever does not is answered 400 and the connection closed.

Plain classes fed a ``bytearray``: they never copy the buffer, only look at it, and
each byte is examined a bounded number of times however the input is split.
"""

from __future__ import annotations

import re

# A chunk-size line (RFC 9112 §7.1): 1*HEXDIG, then chunk-ext = *( ";" name [ "=" value ] ),
# value = token / quoted-string. No BWS: h11 does not accept it before ";" either, and
# leniency about whitespace is where front proxies and servers disagree.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;%b(?:=(?:%b|%b))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED))
_FIELD_LINE = re.compile(rb"%b:[^\r\n]*\r\n" % _TOKEN)
MAX_CHUNK_LINE = 1024  # a size line with extensions; anything longer is an attack, not a client
_LEADING_EMPTY_LINES = 8  # RFC 9112 §2.2: a server SHOULD ignore at least one CRLF before a request


class FramingError(Exception):
    """The bytes cannot be framed safely: answer ``status`` with a fixed text, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


MALFORMED = "Malformed HTTP request"
_BARE_LINE_END = "Malformed HTTP request: lines must end with CRLF"
_OBS_FOLD = "Malformed HTTP request: obsolete line folding is not accepted"
_BAD_CHUNK = "Malformed HTTP request: invalid chunked encoding"


def _has_bare_line_end(data: bytes | bytearray) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


class HeadFinder:
    """Finds the end of a request head in a buffer that may hold more (body, next requests).

    ``find(buffer)`` returns the head's length including its blank line, or None while
    it is incomplete. Bytes already searched are not searched again.
    """

    __slots__ = ("_limit", "_searched")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._searched = 0

    def reset(self) -> None:
        self._searched = 0

    def find(self, buffer: bytearray) -> int | None:
        skipped = 0
        while buffer[:2] == b"\r\n" and skipped < _LEADING_EMPTY_LINES:
            del buffer[:2]  # empty lines before a request line, as after an old client's body
            skipped += 1
            self._searched = 0
        searched = self._searched
        end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
        if (end + 4 if end >= 0 else len(buffer)) > self._limit:
            raise FramingError(431, "Request header fields too large")
        stop = end + 4 if end >= 0 else len(buffer)
        # A bare LF would make us wait for a CRLFCRLF that never comes: refuse it at once.
        newline = buffer.find(b"\n", searched, stop)
        while newline >= 0:
            if newline == 0 or buffer[newline - 1] != 0x0D:
                raise FramingError(400, _BARE_LINE_END)
            newline = buffer.find(b"\n", newline + 1, stop)
        if end < 0:
            self._searched = len(buffer)
            return None
        self._searched = 0
        head = buffer[:stop]
        if _has_bare_line_end(head):
            raise FramingError(400, _BARE_LINE_END)
        if b"\r\n " in head or b"\r\n\t" in head:
            raise FramingError(400, _OBS_FOLD)  # RFC 9112 §5.2 allows refusing it; we do
        return stop


class ChunkedBody:
    """Validates a chunked body as it arrives and says how many bytes of it are sound.

    ``scan(buffer, offset)`` looks at ``buffer[offset:]`` and returns how many more bytes
    (from ``offset``) belong to the body and are valid so far; ``done`` once the last
    chunk and the trailer section have been seen. Raises ``FramingError`` otherwise.
    """

    __slots__ = ("_left", "_state", "_trailer_bytes", "_trailer_limit", "done")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, trailer_limit: int) -> None:
        self._state = self._SIZE
        self._left = 0  # data bytes left in the current chunk
        self._trailer_bytes = 0
        self._trailer_limit = trailer_limit
        self.done = False

    def scan(self, buffer: bytearray, offset: int = 0) -> int:
        pos = offset
        end = len(buffer)
        while pos < end and not self.done:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                if end - pos < 2:
                    if buffer[pos : pos + 1] != b"\r":
                        raise FramingError(400, _BAD_CHUNK)
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise FramingError(400, _BAD_CHUNK)
                pos += 2
                self._state = self._SIZE
            elif state == self._SIZE:
                line_end = self._line_end(buffer, pos, MAX_CHUNK_LINE)
                if line_end < 0:
                    break
                match = _CHUNK_LINE.fullmatch(buffer, pos, line_end)
                if match is None:
                    raise FramingError(400, _BAD_CHUNK)
                pos = line_end
                size = int(match.group(1), 16)
                if size:
                    self._left = size
                    self._state = self._DATA
                else:
                    self._state = self._TRAILER
            else:  # trailer section: field lines, then an empty line
                line_end = self._line_end(buffer, pos, self._trailer_limit - self._trailer_bytes)
                if line_end < 0:
                    break
                self._trailer_bytes += line_end - pos
                if line_end - pos == 2:
                    self.done = True
                elif _FIELD_LINE.fullmatch(buffer, pos, line_end) is None:
                    raise FramingError(400, _BAD_CHUNK)
                pos = line_end
        return pos - offset

    @staticmethod
    def _line_end(buffer: bytearray, pos: int, limit: int) -> int:
        """End of the CRLF-terminated line at ``pos`` (after its LF), or -1 while incomplete."""
        newline = buffer.find(b"\n", pos, pos + limit + 1)
        if newline < 0:
            if len(buffer) - pos > limit:
                raise FramingError(400, _BAD_CHUNK)
            return -1
        if newline == pos or buffer[newline - 1] != 0x0D or buffer.find(b"\r", pos, newline - 1) >= 0:
            raise FramingError(400, _BAD_CHUNK)  # a bare LF or a bare CR
        return newline + 1

    @property
    def expects_more(self) -> bool:
        return not self.done


def transfer_coding_status(head: bytes | bytearray) -> int:
    """The status for a Transfer-Encoding h11 refused (RFC 9112 §6.1).

    400 when the body's length cannot be known (chunked missing, not last, or applied
    twice); 501 when the framing is sound but another coding (gzip...) precedes chunked.
    """
    codings: list[bytes] = []
    for line in bytes(head).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return 400
    return 501
