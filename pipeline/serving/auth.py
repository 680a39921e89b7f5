"""Token checks, as Databricks does them, plus the `api-key` header Azure OpenAI clients send.

A client authenticates with `Authorization: Bearer <token>`, with HTTP Basic where the user is
the literal `token` and the password is the token (`curl -u token:$DATABRICKS_TOKEN`), or with
`api-key: <token>` (Azure OpenAI's header), on every route. Every credential sent must carry the
token: one that does not is refused even when the other does, so a stale key is never hidden.
No credentials is 401; credentials that are not the token is 403. Messages never echo what was
sent.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Mapping

from pipeline.serving.errors import PermissionDenied, Unauthenticated
from pipeline.serving.settings import SettingsError

BASIC_USER = "token"
# Azure OpenAI's key header; HTTP header names are case-insensitive.
API_KEY_HEADER = "api-key"
_HOW_TO_SEND = "send 'Authorization: Bearer <token>' or 'api-key: <token>'"


def read_token(token_env: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token the server requires, read once at start; None when auth is off.

    Raises SettingsError (key "token_env") when the variable is unset or empty.
    """
    if token_env is None:
        return None
    token = environ.get(token_env, "")
    if not token:
        raise SettingsError("token_env", f"environment variable {token_env} is unset or empty")
    return token


def check_authorization(
    header: str | None, token: str | None, *, api_key: str | None = None
) -> None:
    """Accept the request or raise; `header` is `Authorization`, `api_key` is `api-key`.

    A blank header counts as absent. Raises Unauthenticated when both are absent or
    `Authorization` is unreadable, PermissionDenied when any credential sent does not carry
    `token`. With `token` None everything is accepted.
    """
    if token is None:
        return
    presented = _presented_tokens(header, api_key)
    if not presented:
        raise Unauthenticated(f"missing credentials; {_HOW_TO_SEND}")
    for candidate in presented:
        # Constant-time comparison on bytes: compare_digest refuses non-ASCII str.
        if not hmac.compare_digest(candidate.encode(), token.encode()):
            raise PermissionDenied("invalid access token")


def _presented_tokens(header: str | None, api_key: str | None) -> list[str]:
    presented = []
    if header is not None and header.strip():
        presented.append(_authorization_token(header))
    if api_key is not None and api_key.strip():
        presented.append(api_key.strip())
    return presented


def _authorization_token(header: str) -> str:
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        return _basic_password(credentials)
    raise Unauthenticated(f"unsupported Authorization header; {_HOW_TO_SEND}")


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise Unauthenticated("malformed Basic credentials") from err
    user, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthenticated("malformed Basic credentials; expected user:password")
    if user != BASIC_USER:
        raise PermissionDenied(f"Basic auth user must be {BASIC_USER!r}")
    return password
