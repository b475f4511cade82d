"""HTTP requests to URLs that may carry credentials (``http://user:password@host/...``).

urllib reads such a URL's ``user:password@`` as part of the host name, so every request would fail
on a name lookup. The credentials go in an HTTP basic Authorization header instead, and the URL the
request holds (which urllib's errors may quote) has none.

urllib's redirect handler copies every header to wherever a redirect points, another host or plain
http included. Requests built here must be opened with ``open_request`` or an opener from
``build_opener``, whose redirects keep the Authorization header only within the origin it was meant
for, as Go's and Prometheus's HTTP clients do.
"""

from __future__ import annotations

import base64
import http.client
import urllib.request
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def basic_auth_request(
    url: str, headers: Mapping[str, str], data: bytes | None = None, method: str | None = None
) -> urllib.request.Request:
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    sent = dict(headers)
    if at:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        sent["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=host))
    return urllib.request.Request(url, data=data, headers=sent, method=method)


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port, the port filled in from the scheme when the URL leaves it out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


class CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but drops the Authorization header when one leads to another
    scheme, host or port: the password was given for the first server only, and an http:// target
    would also carry it in clear text."""

    def redirect_request(  # noqa: PLR0917 - urllib passes these six positionally
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and origin(redirected.full_url) != origin(req.full_url):
            redirected.remove_header("Authorization")
        return redirected


def build_opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """urllib's opener with ``handlers`` added and the redirect handler above in place of its own."""
    return urllib.request.build_opener(CredentialsStayHome(), *handlers)


# Like urlopen's own opener (environment proxies, default TLS checks), with the safe redirects.
OPENER = build_opener()


def open_request(request: urllib.request.Request, timeout: float) -> Any:
    """What ``urllib.request.urlopen(request, timeout=timeout)`` does, with the safe redirects."""
    return OPENER.open(request, timeout=timeout)
