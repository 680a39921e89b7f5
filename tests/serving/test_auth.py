from __future__ import annotations

import base64

import pytest

from pipeline.serving.auth import check_authorization, read_token
from pipeline.serving.errors import PermissionDenied, Unauthenticated
from pipeline.serving.settings import SettingsError

TOKEN = "dapi-secret"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header", [None, "", "Bearer whatever", "Basic !!"])
def test_without_a_token_anything_is_accepted(header: str | None) -> None:
    check_authorization(header, None)


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer   {TOKEN} ", basic("token", TOKEN)]
)
def test_the_token_is_accepted_as_bearer_or_basic(header: str) -> None:
    check_authorization(header, TOKEN)


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Bearer", "Token abc", "Basic not-base64!", basic("", "")[:-2]]
)
def test_missing_or_unreadable_credentials_are_401(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        check_authorization(header, TOKEN)


def test_basic_without_a_colon_is_401() -> None:
    header = "Basic " + base64.b64encode(b"token").decode()

    with pytest.raises(Unauthenticated):
        check_authorization(header, TOKEN)


@pytest.mark.parametrize(
    "header", ["Bearer dapi-wrong", basic("token", "dapi-wrong"), basic("admin", TOKEN)]
)
def test_wrong_credentials_are_403_and_not_echoed(header: str) -> None:
    with pytest.raises(PermissionDenied) as caught:
        check_authorization(header, TOKEN)

    assert "dapi" not in caught.value.message


def test_read_token() -> None:
    assert read_token(None, {}) is None
    assert read_token("T", {"T": TOKEN}) == TOKEN


@pytest.mark.parametrize("environ", [{}, {"T": ""}])
def test_read_token_names_the_setting_when_the_variable_is_empty(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as caught:
        read_token("T", environ)

    assert caught.value.key == "token_env"
