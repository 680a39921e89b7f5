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


@pytest.mark.parametrize("api_key", [TOKEN, f"  {TOKEN} "])
def test_the_token_is_accepted_as_an_azure_api_key(api_key: str) -> None:
    check_authorization(None, TOKEN, api_key=api_key)


@pytest.mark.parametrize("api_key", ["", "   "])
def test_a_blank_api_key_counts_as_no_credentials(api_key: str) -> None:
    with pytest.raises(Unauthenticated):
        check_authorization(None, TOKEN, api_key=api_key)


def test_a_wrong_api_key_is_403_and_not_echoed() -> None:
    with pytest.raises(PermissionDenied) as caught:
        check_authorization(None, TOKEN, api_key="dapi-wrong")

    assert "dapi" not in caught.value.message


@pytest.mark.parametrize(
    ("header", "api_key"), [(f"Bearer {TOKEN}", "dapi-wrong"), ("Bearer dapi-wrong", TOKEN)]
)
def test_every_credential_sent_must_carry_the_token(header: str, api_key: str) -> None:
    with pytest.raises(PermissionDenied):
        check_authorization(header, TOKEN, api_key=api_key)


def test_both_headers_with_the_token_are_accepted() -> None:
    check_authorization(f"Bearer {TOKEN}", TOKEN, api_key=TOKEN)


def test_without_a_token_any_api_key_is_accepted() -> None:
    check_authorization(None, None, api_key="whatever")
