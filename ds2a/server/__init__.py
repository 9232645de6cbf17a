"""Hand-rolled HTTP/1.1 server: h11 parses requests, responses and SSE chunks are written directly."""

from .core import Framing
from .errors import ErrorRenderer, HTTPError
from .request import Request
from .responder import Responder
from .router import Router
from .server import Handler, HTTPServer

__all__ = ["ErrorRenderer", "Framing", "HTTPError", "HTTPServer", "Handler", "Request", "Responder", "Router"]
