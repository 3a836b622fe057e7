"""Reading a digest ``Authorization`` header (RFC 7616 3.4, RFC 3261 25.1 quoting), sans-IO.

The registrar (``ivr/sip/registrar.py``) reads every REGISTER's credentials
with :func:`parse_credentials`; anything that is not a scheme followed by
``name=value`` pairs is a :class:`DigestError`, answered with 400.
"""

from __future__ import annotations

import re


class DigestError(ValueError):
    """An Authorization header we cannot read."""


_PARAM_NAME = re.compile(r"[ \t]*([A-Za-z0-9_.!%*+`'~-]+)[ \t]*=[ \t]*")
_TOKEN_VALUE = re.compile(r"[^\s,\"]+")


def parse_credentials(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` -> ("Digest", {"a": "b", "c": "d"}); names lower-cased.

    Raises :class:`DigestError` for anything that is not a scheme followed by
    comma-separated ``name=token`` or ``name="quoted string"`` pairs.
    """
    value = value.strip()
    m = re.match(r"([A-Za-z0-9_.!%*+`'~-]+)[ \t]+", value)
    if m is None:
        raise DigestError("no scheme")
    scheme, rest = m.group(1), value[m.end() :]
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while True:
        pm = _PARAM_NAME.match(rest, i)
        if pm is None:
            raise DigestError("expected name=value")
        name = pm.group(1).lower()
        i = pm.end()
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted string")
            i += 1
            val = "".join(chars)
        else:
            tm = _TOKEN_VALUE.match(rest, i)
            if tm is None:
                raise DigestError(f"no value for {name}")
            val = tm.group(0)
            i = tm.end()
        if name in params:
            raise DigestError(f"{name} given twice")
        params[name] = val
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            return scheme, params
        if rest[i] != ",":
            raise DigestError("expected a comma between parameters")
        i += 1
