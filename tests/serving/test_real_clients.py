"""Real client libraries, unchanged, against the real server: the ways the Databricks docs query
a chat endpoint (OpenAI Chat Completions and Responses, databricks-sdk, MLflow Deployments, and
the REST example's curl with Basic auth), plus openai's Azure client on the Azure route. Every
answer is parsed by the client's own types.

The echo model makes every value predictable: the answer is the last user message's words cut
to the token budget, and prompt_tokens counts the words of all messages.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from databricks.sdk.errors import DatabricksError, PermissionDenied, ResourceDoesNotExist
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole, QueryEndpointResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseOutputMessage, ResponseReasoningItem

from pipeline.serving.process import LocalEndpoint

from .conftest import TOKEN, TOKEN_ENV

CHAT_ENDPOINT = "databricks-claude-sonnet-4-5"
RESPONSES_ENDPOINT = "databricks-gpt-5"
# The docs' prompt: 5 + 7 words. The REST example's question starts with a space, as in the docs.
SYSTEM = "You are a helpful assistant."
QUESTION = "What is a mixture of experts model?"
PROMPT_TOKENS = 12
ANSWER_TOKENS = 7
# Short on purpose: nothing here should retry or wait, and a hang must fail the test fast.
HTTP_TIMEOUT_S = 10.0
SDK_RETRY_TIMEOUT_S = 5
# MLflow takes its timeouts (whole seconds) and retry count from the environment only.
MLFLOW_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_DEPLOYMENT_PREDICT_TIMEOUT": str(int(HTTP_TIMEOUT_S)),
    "MLFLOW_DEPLOYMENT_PREDICT_TOTAL_TIMEOUT": str(int(HTTP_TIMEOUT_S)),
}
# Environment that changes what these clients send or where: cleared for every test.
CLIENT_ENV_PREFIXES = ("OPENAI_", "DATABRICKS_", "MLFLOW_")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# A proxy no client may use (TEST-NET-1, RFC 5737): one that ignored NO_PROXY would try it and
# `_loopback_only` would record the attempt.
UNUSABLE_PROXY = "http://192.0.2.1:3128"
LOOPBACK_NAMES = "127.0.0.1,localhost"


@pytest.fixture(scope="module")
def _clients_process() -> Iterator[LocalEndpoint]:
    args = ("--model", "echo", "--endpoint-name", CHAT_ENDPOINT,
            "--endpoint-name", RESPONSES_ENDPOINT, "--token-env", TOKEN_ENV)
    with LocalEndpoint(*args, env={TOKEN_ENV: TOKEN}) as endpoint:
        yield endpoint


@pytest.fixture
def endpoint(_clients_process: LocalEndpoint) -> LocalEndpoint:
    """The echo server requiring TOKEN, serving both docs endpoint names, freshly reset."""
    _clients_process.reset()
    return _clients_process


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No client config from this machine: no env, no ~/.databrickscfg, no usable proxy."""
    for name in list(os.environ):
        if name.upper().startswith(CLIENT_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in PROXY_VARS:
        monkeypatch.setenv(name, UNUSABLE_PROXY)
        monkeypatch.setenv(name.lower(), UNUSABLE_PROXY)
    monkeypatch.setenv("NO_PROXY", LOOPBACK_NAMES)
    monkeypatch.setenv("no_proxy", LOOPBACK_NAMES)
    # MLflow's usage telemetry would call out to the internet.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


class StrayConnection(BaseException):
    """A client connected somewhere other than the local server.

    Not an OSError, nor even an Exception: no client may retry it (the SDK would for up to its
    retry timeout, 300 s inside MLflow) or swallow it as a fallback (the SDK's host-metadata
    probe catches Exception), so a stray connection fails the test at once.
    """


@pytest.fixture(autouse=True)
def _loopback_only(
    monkeypatch: pytest.MonkeyPatch, _clients_process: LocalEndpoint
) -> Iterator[None]:
    """Refuse, record and fail on any TCP connection that is not to the local server."""
    server = (_clients_process.host, int(_clients_process.url.rsplit(":", 1)[1]))
    strays: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if inet and tuple(address[:2]) != server:
            strays.append(address)
            raise StrayConnection(f"a client tried to reach {address!r}, not the local server")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
    assert not strays, f"a client tried to reach something other than the local server: {strays}"


def openai_client(endpoint: LocalEndpoint, api_key: str = TOKEN) -> openai.OpenAI:
    """The docs' client; no retries, so one call is one request."""
    return openai.OpenAI(
        api_key=api_key, base_url=endpoint.base_url, max_retries=0, timeout=HTTP_TIMEOUT_S
    )


def chat_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def assert_served_once(endpoint: LocalEndpoint, route: str, status: int = 200) -> None:
    stats = endpoint.stats()
    assert stats["requests_total"] == 1
    assert stats["by_route"][route] == 1
    assert stats["by_status"] == {str(status): 1}


# --- 1. OpenAI Chat Completions ---


def test_openai_chat_completion_parses_into_the_clients_type(endpoint: LocalEndpoint) -> None:
    completion = openai_client(endpoint).chat.completions.create(
        model=CHAT_ENDPOINT, messages=chat_messages(), max_tokens=256
    )

    assert isinstance(completion, ChatCompletion)
    assert completion.model == CHAT_ENDPOINT
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert (choice.message.role, choice.message.content) == ("assistant", QUESTION)
    assert completion.usage is not None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        PROMPT_TOKENS, ANSWER_TOKENS, PROMPT_TOKENS + ANSWER_TOKENS)
    assert_served_once(endpoint, "chat_completions")


def test_openai_chat_completion_cut_by_max_tokens_is_length(endpoint: LocalEndpoint) -> None:
    completion = openai_client(endpoint).chat.completions.create(
        model=CHAT_ENDPOINT, messages=chat_messages(), max_tokens=3
    )

    [choice] = completion.choices
    assert (choice.finish_reason, choice.message.content) == ("length", "What is a")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        PROMPT_TOKENS, 3)


# --- 2. OpenAI Responses ---


def create_response(endpoint: LocalEndpoint, max_output_tokens: int) -> Response:
    return openai_client(endpoint).responses.create(
        model=RESPONSES_ENDPOINT,
        input=chat_messages(),
        max_output_tokens=max_output_tokens,
    )


def test_openai_response_parses_into_the_clients_type(endpoint: LocalEndpoint) -> None:
    response = create_response(endpoint, max_output_tokens=256)

    assert isinstance(response, Response)
    assert response.output_text == QUESTION
    assert (response.model, response.status, response.incomplete_details) == (
        RESPONSES_ENDPOINT, "completed", None)
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert (message.role, message.status) == ("assistant", "completed")
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        PROMPT_TOKENS, ANSWER_TOKENS, PROMPT_TOKENS + ANSWER_TOKENS)
    assert_served_once(endpoint, "responses")


def test_openai_response_cut_by_max_output_tokens_is_incomplete(endpoint: LocalEndpoint) -> None:
    response = create_response(endpoint, max_output_tokens=2)

    assert response.output_text == "What is"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (PROMPT_TOKENS, 2)


def test_openai_output_text_skips_a_leading_reasoning_item(endpoint: LocalEndpoint) -> None:
    endpoint.control(reasoning_item=True)

    response = create_response(endpoint, max_output_tokens=256)

    reasoning, message = response.output
    assert isinstance(reasoning, ResponseReasoningItem)
    assert isinstance(message, ResponseOutputMessage)
    assert response.output_text == QUESTION


# --- 3. OpenAI error mapping ---


@pytest.mark.parametrize(
    ("api_key", "model", "max_tokens", "error", "status", "error_code"),
    [
        ("dapi-wrong", CHAT_ENDPOINT, 5, openai.PermissionDeniedError, 403, "PERMISSION_DENIED"),
        # None: the request omits the Authorization header the client would send.
        (None, CHAT_ENDPOINT, 5, openai.AuthenticationError, 401, "UNAUTHENTICATED"),
        (TOKEN, "no-such-endpoint", 5, openai.NotFoundError, 404, "RESOURCE_DOES_NOT_EXIST"),
        (TOKEN, CHAT_ENDPOINT, 9, openai.BadRequestError, 400, "INVALID_PARAMETER_VALUE"),
    ],
    ids=["wrong-key", "no-key", "unknown-endpoint", "max-tokens-over-limit"],
)
def test_openai_maps_databricks_errors_to_its_own_classes(
    endpoint: LocalEndpoint,
    api_key: str | None,
    model: str,
    max_tokens: int,
    error: type[openai.APIStatusError],
    status: int,
    error_code: str,
) -> None:
    endpoint.control(max_tokens_limit=8)
    client = openai_client(endpoint, TOKEN if api_key is None else api_key)
    headers = {"Authorization": openai.omit} if api_key is None else None

    with pytest.raises(error) as raised:
        client.chat.completions.create(
            model=model, messages=chat_messages(), max_tokens=max_tokens, extra_headers=headers
        )

    assert raised.value.status_code == status
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error_code"] == error_code
    assert_served_once(endpoint, "chat_completions", status)


# --- 3b. openai's Azure client: deployment in the path, token in `api-key` ---

# Any version Azure accepts: the client sends it as `?api-version=`, which the server ignores.
AZURE_API_VERSION = "2024-10-21"


def azure_client(endpoint: LocalEndpoint, api_key: str = TOKEN) -> openai.AzureOpenAI:
    """Azure's client as its docs build it, pointed at the server's root; no retries."""
    return openai.AzureOpenAI(
        api_key=api_key,
        azure_endpoint=endpoint.url,
        api_version=AZURE_API_VERSION,
        max_retries=0,
        timeout=HTTP_TIMEOUT_S,
    )


def test_azure_openai_chat_completion_parses_into_the_clients_type(
    endpoint: LocalEndpoint,
) -> None:
    completion = azure_client(endpoint).chat.completions.create(
        model=CHAT_ENDPOINT, messages=chat_messages(), max_tokens=256
    )

    assert isinstance(completion, ChatCompletion)
    assert completion.model == CHAT_ENDPOINT
    [choice] = completion.choices
    assert (choice.finish_reason, choice.message.content) == ("stop", QUESTION)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert_served_once(endpoint, "chat_completions")


def test_azure_openai_wrong_key_is_permission_denied(endpoint: LocalEndpoint) -> None:
    with pytest.raises(openai.PermissionDeniedError) as raised:
        azure_client(endpoint, "dapi-wrong").chat.completions.create(
            model=CHAT_ENDPOINT, messages=chat_messages(), max_tokens=5
        )

    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error_code"] == "PERMISSION_DENIED"
    assert_served_once(endpoint, "chat_completions", 403)


# --- 4. databricks-sdk ---


def workspace_client(endpoint: LocalEndpoint, token: str = TOKEN) -> WorkspaceClient:
    """A PAT-only client: no other auth method is tried, so no other host is asked.

    Building it GETs `{host}/.well-known/databricks-config`; this server answers 404 and the SDK
    logs a warning and goes on with the explicit config.
    """
    config = Config(
        host=endpoint.url,
        token=token,
        auth_type="pat",
        retry_timeout_seconds=SDK_RETRY_TIMEOUT_S,
        http_timeout_seconds=HTTP_TIMEOUT_S,
    )
    return WorkspaceClient(config=config)


def sdk_messages() -> list[ChatMessage]:
    return [ChatMessage(role=ChatMessageRole.SYSTEM, content=SYSTEM),
            ChatMessage(role=ChatMessageRole.USER, content=QUESTION)]


def test_sdk_query_parses_into_a_query_endpoint_response(endpoint: LocalEndpoint) -> None:
    response = workspace_client(endpoint).serving_endpoints.query(
        name=CHAT_ENDPOINT, messages=sdk_messages(), max_tokens=4
    )

    assert isinstance(response, QueryEndpointResponse)
    assert response.model == CHAT_ENDPOINT
    assert response.choices is not None
    [choice] = response.choices
    assert choice.index == 0
    # No assertion on choice.finish_reason: this SDK reads `finishReason`, while Databricks (like
    # its docs and this server) sends `finish_reason`, so it is None against a workspace too.
    assert choice.message is not None
    assert choice.message.role == ChatMessageRole.ASSISTANT
    assert choice.message.content == "What is a mixture"
    assert response.usage is not None
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        PROMPT_TOKENS, 4, PROMPT_TOKENS + 4)
    assert_served_once(endpoint, "invocations")


@pytest.mark.parametrize(
    ("token", "name", "error", "error_code"),
    [
        ("dapi-wrong", CHAT_ENDPOINT, PermissionDenied, "PERMISSION_DENIED"),
        (TOKEN, "no-such-endpoint", ResourceDoesNotExist, "RESOURCE_DOES_NOT_EXIST"),
    ],
    ids=["wrong-token", "unknown-endpoint"],
)
def test_sdk_maps_databricks_errors_to_its_own_classes(
    endpoint: LocalEndpoint, token: str, name: str, error: type[DatabricksError], error_code: str
) -> None:
    with pytest.raises(error) as raised:
        workspace_client(endpoint, token).serving_endpoints.query(
            name=name, messages=sdk_messages(), max_tokens=4
        )

    assert raised.value.error_code == error_code
    assert endpoint.stats()["requests_total"] == 1  # the SDK retried nothing


# --- 5. MLflow Deployments ---


def test_mlflow_deployments_predict_returns_the_chat_completion(
    endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", endpoint.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    for name, value in MLFLOW_LIMITS.items():
        monkeypatch.setenv(name, value)
    # Imported here so MLflow's import-time environment checks see the isolated environment.
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("databricks")
    inputs = {"messages": chat_messages(), "temperature": 0.1, "max_tokens": 20}

    response = client.predict(endpoint=CHAT_ENDPOINT, inputs=inputs)

    assert response["choices"][0]["message"] == {"role": "assistant", "content": QUESTION}
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": ANSWER_TOKENS,
                                 "total_tokens": PROMPT_TOKENS + ANSWER_TOKENS}
    assert response["model"] == CHAT_ENDPOINT
    assert_served_once(endpoint, "invocations")


# --- 6. The REST example, sent as its curl sends it ---


def test_rest_example_with_basic_auth_answers_the_documented_shape(
    endpoint: LocalEndpoint,
) -> None:
    body = {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f" {QUESTION}"}]}
    # `curl -u token:$DATABRICKS_TOKEN` sends Basic credentials up front, without a challenge.
    credentials = base64.b64encode(f"token:{TOKEN}".encode()).decode()
    request = urllib.request.Request(
        f"{endpoint.base_url}/{CHAT_ENDPOINT}/invocations",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json",
                 "Accept": "*/*"},
    )

    # A fresh opener (not urlopen's cached one) so it reads this test's proxy settings.
    with urllib.request.build_opener().open(request, timeout=HTTP_TIMEOUT_S) as reply:
        status, answer = reply.status, json.load(reply)

    assert status == 200
    assert set(answer) == {"model", "choices", "usage", "object", "id", "created"}
    assert (answer["model"], answer["object"]) == (CHAT_ENDPOINT, "chat.completion")
    assert isinstance(answer["id"], str)
    assert isinstance(answer["created"], int)
    [choice] = answer["choices"]
    assert choice == {"message": {"role": "assistant", "content": QUESTION},
                      "index": 0, "finish_reason": "stop"}
    assert answer["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": ANSWER_TOKENS,
                               "total_tokens": PROMPT_TOKENS + ANSWER_TOKENS}
