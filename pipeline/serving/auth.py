"""Bearer and Basic token checks, as Databricks does them.

A client authenticates with `Authorization: Bearer <token>` or with HTTP Basic where the user is
the literal `token` and the password is the token (`curl -u token:$DATABRICKS_TOKEN`). No
credentials is 401; credentials that are not the token is 403. Messages never echo what was sent.
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


def check_authorization(header: str | None, token: str | None) -> None:
    """Accept the request or raise.

    Raises Unauthenticated when credentials are missing or unreadable, PermissionDenied when
    they do not carry `token`. With `token` None everything is accepted.
    """
    if token is None:
        return
    presented = _presented_token(header)
    # Constant-time comparison on bytes: compare_digest refuses non-ASCII str.
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise PermissionDenied("invalid access token")


def _presented_token(header: str | None) -> str:
    if header is None or not header.strip():
        raise Unauthenticated("missing Authorization header; send 'Bearer <token>'")
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        return _basic_password(credentials)
    raise Unauthenticated("unsupported Authorization header; send 'Bearer <token>'")


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
