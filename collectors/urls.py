"""HTTP requests to URLs that may carry credentials (``http://user:password@host/...``).

urllib reads such a URL's ``user:password@`` as part of the host name, so every request would fail
on a name lookup. The credentials go in an HTTP basic Authorization header instead, and the URL the
request holds (which urllib's errors may quote) has none.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit


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
