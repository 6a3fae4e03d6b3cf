"""Bearer tokens as HTTP carries them, one rule for the dashboard and the bridge: the scheme in any case, and the
token compared as bytes in constant time, so any Unicode token works."""

from __future__ import annotations

import hmac

HTTP_BLANKS = " \t"


def bearer_token(authorization: str) -> bytes | None:
    """The credentials of a `Bearer` (any case) Authorization header as sent, or None for another scheme."""
    # Only HTTP's blanks are stripped: str.strip() would also take \x85 and \xa0, the last bytes of tokens ending
    # in "à" or "Ʌ" once Starlette has decoded the header as latin-1.
    scheme, _, credentials = authorization.strip(HTTP_BLANKS).partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip(HTTP_BLANKS).encode("latin-1")  # latin-1 undoes Starlette's decoding: the bytes sent


def token_matches(offered: bytes, token: str) -> bool:
    """The token as UTF-8 bytes against what a client sent, in constant time (any Unicode token works)."""
    return hmac.compare_digest(offered, token.encode())
