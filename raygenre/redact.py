"""Credentials out of URIs: ``redact`` is applied to everything raygenre writes or prints that may hold a URI.

Arrow accepts ``s3://AKID:SECRET@bucket/key``; a user who types that must not find the secret in a lease file,
a ``model.json``, an error line or a log. Standard library only: the CLI's printer uses it at start-up.
"""

from __future__ import annotations

import re

_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*")
# Query parameters whose values are credentials (pre-signed URLs, ?access_key=..., ?session_token=...).
_SECRET_PARAM_RE = re.compile(r"([?&][^=&#]*(?:key|secret|token|signature|password|credential)[^=&#]*=)[^&#]*",
                              re.IGNORECASE)


def _redact_one(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        rest = rest[authority.rindex("@") + 1:]
    elif ":" in authority and not authority.rpartition(":")[2].isdigit() and "@" in rest:
        # user:secret with an unescaped "/" in the secret (AWS secrets hold them): the "@" comes later
        rest = rest[rest.index("@") + 1:]
    return f"{scheme}://" + _SECRET_PARAM_RE.sub(r"\1REDACTED", rest)


def redact(uri: str) -> str:
    """``uri`` (or any text holding URIs) with credentials removed: the userinfo of every ``scheme://`` URI
    is dropped (``s3://AKID:SECRET@bucket/x`` -> ``s3://bucket/x``) and query parameters named like
    key/secret/token/signature/password/credential read ``REDACTED``. Scheme, host and path are kept; local
    paths are returned unchanged. Use it for everything raygenre writes or prints that may hold a URI."""
    text = str(uri)
    return _URI_RE.sub(lambda m: _redact_one(m.group(0)), text) if "://" in text else text


