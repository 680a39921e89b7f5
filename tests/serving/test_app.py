"""Wire behaviour of the real server process, through a plain HTTP client; then the model
execution hook, in-process with injected models."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.serving.app import make_app
from pipeline.serving.chat_model import Message, ModelOutput
from pipeline.serving.models import EchoModel
from pipeline.serving.process import LocalEndpoint
from pipeline.serving.settings import ServingSettings
from pipeline.serving.state import STATE

from .conftest import ENDPOINT, OTHER_ENDPOINT, TOKEN, TOKEN_ENV
from .wire_client import Reply, get, post


def user(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def invoke(endpoint: LocalEndpoint, body: object, name: str = ENDPOINT, **kw: Any) -> Reply:
    return post(f"{endpoint.base_url}/{name}/invocations", body, **kw)


def assert_error(reply: Reply, status: int, code: str) -> str:
    """Check a Databricks error reply; return its message."""
    assert reply.status == status, reply.body
    assert reply.headers.get_content_type() == "application/json"
    assert set(reply.body) == {"error_code", "message"}
    assert reply.body["error_code"] == code
    message: str = reply.body["message"]
    return message


def test_health(endpoint: LocalEndpoint) -> None:
    reply = get(f"{endpoint.url}/health")

    assert (reply.status, reply.body) == (200, {"status": "ok"})


def test_invocations_answer_a_chat_completion(endpoint: LocalEndpoint) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "answer in one word"},
            {"role": "user", "content": "what is this"},
        ],
        "max_tokens": 100,
        "temperature": 0.1,
        "top_p": 0.9,  # unknown fields are ignored
    }

    reply = invoke(endpoint, body)

    assert reply.status == 200
    assert reply.headers.get_content_type() == "application/json"
    completion_id, created = reply.body.pop("id"), reply.body.pop("created")
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", completion_id)
    assert isinstance(created, int) and abs(created - time.time()) < 60
    assert reply.body == {
        "object": "chat.completion",
        "model": ENDPOINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "what is this"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def assert_one_two_answer(reply: Reply) -> None:
    """The echo answer to "one two three" with max_tokens 2, as a Chat Completions body for
    OTHER_ENDPOINT (whichever route served it)."""
    assert reply.status == 200
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", reply.body["id"])
    assert (reply.body["object"], reply.body["model"]) == ("chat.completion", OTHER_ENDPOINT)
    assert reply.body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "one two"},
         "finish_reason": "length"}
    ]
    assert reply.body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_chat_completions_route_names_the_endpoint_in_model(endpoint: LocalEndpoint) -> None:
    reply = post(
        f"{endpoint.base_url}/chat/completions",
        {"model": OTHER_ENDPOINT, **user("one two three"), "max_tokens": 2},
    )

    assert_one_two_answer(reply)


def test_responses_route_answers_a_response_object(endpoint: LocalEndpoint) -> None:
    body = {"model": ENDPOINT, "input": "say this back", "instructions": "be exact",
            "max_output_tokens": 10, "temperature": 0}

    reply = post(f"{endpoint.base_url}/responses", body)

    assert reply.status == 200
    assert re.fullmatch(r"resp_[0-9a-f]+", reply.body.pop("id"))
    assert abs(reply.body.pop("created_at") - time.time()) < 60
    (message,) = reply.body.pop("output")
    assert re.fullmatch(r"msg_[0-9a-f]+", message.pop("id"))
    assert message == {
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "say this back", "annotations": []}],
    }
    assert reply.body == {
        "object": "response",
        "model": ENDPOINT,
        "status": "completed",
        "incomplete_details": None,
        "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
    }


def test_truncated_response_is_incomplete(endpoint: LocalEndpoint) -> None:
    body = {"model": ENDPOINT, "input": [{"role": "user", "content": "a b c d"}],
            "max_output_tokens": 3}

    reply = post(f"{endpoint.base_url}/responses", body)

    assert (reply.body["status"], reply.body["incomplete_details"]) == (
        "incomplete", {"reason": "max_output_tokens"})
    assert reply.body["output"][0]["status"] == "incomplete"
    assert reply.body["output"][0]["content"][0]["text"] == "a b c"
    assert reply.body["usage"]["output_tokens"] == 3


def test_reasoning_item_comes_first_when_enabled(endpoint: LocalEndpoint) -> None:
    endpoint.control(reasoning_item=True)

    reply = post(f"{endpoint.base_url}/responses", {"model": ENDPOINT, "input": "hi"})

    reasoning, message = reply.body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == []
    assert re.fullmatch(r"rs_[0-9a-f]+", reasoning["id"])
    assert message["content"][0]["text"] == "hi"


def test_absent_max_tokens_means_the_server_limit(endpoint: LocalEndpoint) -> None:
    endpoint.control(max_tokens_limit=3)

    reply = invoke(endpoint, user("one two three four five"))

    assert reply.body["choices"][0]["message"]["content"] == "one two three"
    assert reply.body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/nope/invocations", user("hi")),
        ("/chat/completions", {"model": "nope", **user("hi")}),
        ("/responses", {"model": "nope", "input": "hi"}),
    ],
)
def test_unknown_endpoint_name_is_404(endpoint: LocalEndpoint, route: str, body: object) -> None:
    message = assert_error(post(endpoint.base_url + route, body), 404, "RESOURCE_DOES_NOT_EXIST")

    assert "nope" in message


def test_endpoint_names_can_change_at_runtime(endpoint: LocalEndpoint) -> None:
    endpoint.control(endpoint_names=["renamed"])

    assert invoke(endpoint, user("hi"), name="renamed").status == 200
    assert_error(invoke(endpoint, user("hi")), 404, "RESOURCE_DOES_NOT_EXIST")


def test_unknown_path_gets_a_databricks_error(endpoint: LocalEndpoint) -> None:
    assert_error(post(f"{endpoint.url}/api/2.0/nothing", {}), 404, "ENDPOINT_NOT_FOUND")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (f"/{ENDPOINT}/invocations", [1, 2], "request body"),
        (f"/{ENDPOINT}/invocations", {"prompt": "hi"}, "messages"),
        (f"/{ENDPOINT}/invocations", {"messages": [{"role": "bot", "content": "x"}]},
         "messages[0].role"),
        (f"/{ENDPOINT}/invocations", {**user("hi"), "max_tokens": 0}, "max_tokens"),
        (f"/{ENDPOINT}/invocations", {**user("hi"), "max_tokens": 4097}, "max_tokens"),
        (f"/{ENDPOINT}/invocations", {**user("hi"), "temperature": 2.5}, "temperature"),
        ("/chat/completions", user("hi"), "model"),
        ("/chat/completions", {"model": ENDPOINT, "messages": [{"role": "user"}]},
         "messages[0].content"),
        ("/responses", {"model": ENDPOINT}, "input"),
        ("/responses", {"model": ENDPOINT, "input": "x", "max_output_tokens": "9"},
         "max_output_tokens"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(
    endpoint: LocalEndpoint, route: str, body: object, field: str
) -> None:
    reply = post(endpoint.base_url + route, body)

    assert assert_error(reply, 400, "INVALID_PARAMETER_VALUE").startswith(f"{field} ")


def test_malformed_json_is_400(endpoint: LocalEndpoint) -> None:
    reply = post(f"{endpoint.base_url}/{ENDPOINT}/invocations", raw=b"{oops")

    assert "JSON" in assert_error(reply, 400, "INVALID_PARAMETER_VALUE")


def test_fail_first_fails_each_distinct_prompt_exactly_n_times(endpoint: LocalEndpoint) -> None:
    endpoint.control(fail_first=2)

    statuses = {
        prompt: [invoke(endpoint, user(prompt)).status for _ in range(3)]
        for prompt in ("alpha", "beta", "gamma")
    }

    assert statuses == {prompt: [503, 503, 200] for prompt in statuses}
    stats = endpoint.stats()
    assert (stats["faults_injected"], stats["distinct_requests"]) == (6, 3)
    assert stats["by_status"] == {"200": 3, "503": 6}
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (3, 3)


def test_fail_first_holds_under_concurrency(endpoint: LocalEndpoint) -> None:
    endpoint.control(fail_first=2)
    prompts = [f"prompt number {i}" for i in range(8)]

    async def send_all() -> list[tuple[str, int]]:
        async with aiohttp.ClientSession() as session:

            async def send(prompt: str) -> tuple[str, int]:
                url = f"{endpoint.base_url}/chat/completions"
                async with session.post(url, json={"model": ENDPOINT, **user(prompt)}) as reply:
                    await reply.read()
                    return prompt, reply.status

            return await asyncio.gather(*(send(p) for p in prompts for _ in range(3)))

    results = asyncio.run(send_all())

    for prompt in prompts:
        assert sorted(status for p, status in results if p == prompt) == [200, 503, 503]
    stats = endpoint.stats()
    assert (stats["requests_total"], stats["faults_injected"]) == (24, 16)
    assert stats["by_route"] == {"invocations": 0, "chat_completions": 24, "responses": 0}
    assert stats["in_flight"] == 0 and stats["peak_in_flight"] >= 1


@pytest.mark.parametrize(
    ("status", "code"), [(429, "REQUEST_LIMIT_EXCEEDED"), (500, "INTERNAL_ERROR")]
)
def test_injected_fault_status_code_and_retry_after(
    endpoint: LocalEndpoint, status: int, code: str
) -> None:
    endpoint.control(fail_first=1, fail_status=status, retry_after_s=0.01)

    reply = invoke(endpoint, user("hi"))

    assert_error(reply, status, code)
    assert reply.headers["Retry-After"] == "0.01"


def test_no_retry_after_unless_configured(endpoint: LocalEndpoint) -> None:
    endpoint.control(fail_first=1)

    reply = invoke(endpoint, user("hi"))

    assert_error(reply, 503, "TEMPORARILY_UNAVAILABLE")
    assert "Retry-After" not in reply.headers


def test_rejected_requests_are_not_faults(endpoint: LocalEndpoint) -> None:
    endpoint.control(fail_first=1)

    assert invoke(endpoint, {**user("hi"), "max_tokens": 0}).status == 400
    assert invoke(endpoint, user("hi"), name="nope").status == 404
    assert invoke(endpoint, user("hi")).status == 503

    stats = endpoint.stats()
    assert (stats["faults_injected"], stats["distinct_requests"]) == (1, 1)


def test_stats_count_only_model_routes(endpoint: LocalEndpoint) -> None:
    invoke(endpoint, user("a b"))
    post(f"{endpoint.base_url}/responses", {"model": ENDPOINT, "input": "c"})
    get(f"{endpoint.url}/health")
    endpoint.control(fail_first=0)

    stats = endpoint.stats()
    first, last = stats.pop("first_request_at"), stats.pop("last_request_at")
    assert 0 < first <= last <= time.time()

    assert stats == {
        "requests_total": 2,
        "by_status": {"200": 2},
        "by_route": {"invocations": 1, "chat_completions": 0, "responses": 1},
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "tokens_served": 6,
        "faults_injected": 0,
        "faults_by_kind": {"error": 0, "timeout": 0, "reset": 0, "malformed": 0,
                           "truncated": 0, "empty_choices": 0, "fail_first": 0},
        "rate_limited": 0,
        "rejected_overload": 0,
        "connections": 2,  # urllib opens one for each request
        "in_flight": 0,
        "peak_in_flight": 1,
        "queued": 0,
        "distinct_requests": 2,
        "per_second": [2],
        "limited_per_second": [],
    }


def test_control_returns_all_settings(endpoint: LocalEndpoint) -> None:
    settings = endpoint.control(fail_first=2, fail_status=429, retry_after_s=0.01)

    assert (settings["fail_first"], settings["fail_status"], settings["retry_after_s"]) == (
        2, 429, 0.01)
    assert settings["endpoint_names"] == [ENDPOINT, OTHER_ENDPOINT]
    assert settings["max_tokens_limit"] == 4096


@pytest.mark.parametrize(
    ("body", "key"), [({"fail_frist": 2}, "fail_frist"), ({"fail_first": "2"}, "fail_first"),
                      ({"port": 1}, "port")]
)
def test_control_refuses_unknown_keys_and_wrong_types(
    endpoint: LocalEndpoint, body: dict[str, Any], key: str
) -> None:
    reply = post(f"{endpoint.url}/control", body)

    assert assert_error(reply, 400, "INVALID_PARAMETER_VALUE").startswith(f"{key}: ")
    assert invoke(endpoint, user("hi")).status == 200  # nothing was applied


def test_reset_restores_settings_and_zeroes_counters(endpoint: LocalEndpoint) -> None:
    started_with = endpoint.reset()
    endpoint.control(fail_first=1, reasoning_item=True)
    invoke(endpoint, user("hi"))

    assert endpoint.reset() == started_with
    assert endpoint.stats()["requests_total"] == 0
    assert endpoint.stats()["distinct_requests"] == 0
    assert invoke(endpoint, user("hi")).status == 200  # fault memory is gone with fail_first


def basic(user: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def test_token_required_when_configured(secured_endpoint: LocalEndpoint) -> None:
    ep = secured_endpoint
    assert_error(invoke(ep, user("hi")), 401, "UNAUTHENTICATED")
    wrong = invoke(ep, user("hi"), headers={"Authorization": "Bearer dapi-wrong"})
    assert "dapi-wrong" not in assert_error(wrong, 403, "PERMISSION_DENIED")
    assert invoke(ep, user("hi"), headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert invoke(ep, user("hi"), headers=basic("token", TOKEN)).status == 200
    assert_error(invoke(ep, user("hi"), headers=basic("token", "nope")), 403, "PERMISSION_DENIED")


def test_auth_comes_before_endpoint_and_body_checks(secured_endpoint: LocalEndpoint) -> None:
    assert_error(invoke(secured_endpoint, [], name="nope"), 401, "UNAUTHENTICATED")


def test_token_never_appears_in_control_output(secured_endpoint: LocalEndpoint) -> None:
    settings = secured_endpoint.control(fail_first=0)

    assert TOKEN not in str(settings)
    assert settings["token_env"] == TOKEN_ENV


def test_latency_holds_requests_while_the_server_stays_concurrent(endpoint: LocalEndpoint) -> None:
    endpoint.control(latency_s=0.3)

    async def fire(n: int) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                url = f"{endpoint.base_url}/{ENDPOINT}/invocations"
                async with session.post(url, json=user(f"request {i}")) as reply:
                    return reply.status

            return await asyncio.gather(*(one(i) for i in range(n)))

    assert asyncio.run(fire(5)) == [200] * 5
    # All five were held at once: a server that slept synchronously would peak at 1.
    assert endpoint.stats()["peak_in_flight"] == 5


def test_control_changes_and_reset_restores_the_load_knobs(endpoint: LocalEndpoint) -> None:
    started_with = endpoint.reset()
    changed = endpoint.control(max_concurrency=2, overload="reject", requests_per_minute=10,
                               error_statuses=[503], seed=3)

    assert (changed["max_concurrency"], changed["overload"]) == (2, "reject")
    assert (changed["requests_per_minute"], changed["error_statuses"], changed["seed"]) == (
        10, [503], 3)
    assert endpoint.reset() == started_with


def test_control_refuses_a_bad_load_knob_naming_it(endpoint: LocalEndpoint) -> None:
    reply = post(f"{endpoint.url}/control", {"overload": "drop", "max_concurrency": 1})

    assert assert_error(reply, 400, "INVALID_PARAMETER_VALUE").startswith("overload: ")
    assert endpoint.control()["max_concurrency"] is None  # nothing was applied


# --- Azure OpenAI's chat-completions route, and its api-key header on every route ---


AZURE_QUERY = "?api-version=2024-10-21"


def azure(
    endpoint: LocalEndpoint, body: object, name: str = ENDPOINT, query: str = AZURE_QUERY,
    **kw: Any,
) -> Reply:
    """POST to Azure OpenAI's path, where the endpoint name is the deployment."""
    return post(f"{endpoint.url}/openai/deployments/{name}/chat/completions{query}", body, **kw)


def test_azure_route_requires_an_api_version_as_azure_does(endpoint: LocalEndpoint) -> None:
    reply = azure(endpoint, user("hi"), query="")
    assert assert_error(reply, 400, "INVALID_PARAMETER_VALUE") == (
        "the query parameter api-version is required on this route"
    )
    other_route = post(f"{endpoint.base_url}/chat/completions", {"model": ENDPOINT, **user("hi")})
    assert other_route.status == 200


def test_a_required_header_is_refused_when_missing(endpoint: LocalEndpoint) -> None:
    endpoint.control(required_headers=["X-Tenant"])
    url = f"{endpoint.base_url}/{ENDPOINT}/invocations"
    missing = post(url, user("hi"))
    assert assert_error(missing, 400, "INVALID_PARAMETER_VALUE") == (
        "the header X-Tenant is required"
    )
    assert post(url, user("hi"), headers={"x-tenant": "acme"}).status == 200


def test_azure_deployments_route_answers_a_chat_completion(endpoint: LocalEndpoint) -> None:
    reply = azure(endpoint, {**user("one two three"), "max_tokens": 2}, name=OTHER_ENDPOINT)

    assert_one_two_answer(reply)
    assert "x-ratelimit-limit-requests" not in reply.headers  # no limits set


def test_azure_route_counts_as_chat_completions_in_stats(endpoint: LocalEndpoint) -> None:
    azure(endpoint, user("hi"))

    stats = endpoint.stats()
    assert stats["by_route"] == {"invocations": 0, "chat_completions": 1, "responses": 0}
    assert (stats["requests_total"], stats["by_status"]) == (1, {"200": 1})


def test_azure_route_names_the_endpoint_in_the_path_not_the_body(endpoint: LocalEndpoint) -> None:
    ignored_model = azure(endpoint, {"model": "not-served", **user("hi")})
    unknown_deployment = azure(endpoint, {"model": ENDPOINT, **user("hi")}, name="nope")

    assert (ignored_model.status, ignored_model.body["model"]) == (200, ENDPOINT)
    assert "nope" in assert_error(unknown_deployment, 404, "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "request body"),
        ({"prompt": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({**user("hi"), "max_tokens": 4097}, "max_tokens"),
        ({**user("hi"), "temperature": 2.5}, "temperature"),
    ],
)
def test_azure_route_validates_like_chat_completions(
    endpoint: LocalEndpoint, body: object, field: str
) -> None:
    reply = azure(endpoint, body)

    assert assert_error(reply, 400, "INVALID_PARAMETER_VALUE").startswith(f"{field} ")


def test_azure_route_shares_faults_and_limits_with_chat_completions(
    endpoint: LocalEndpoint,
) -> None:
    endpoint.control(fail_first=1, requests_per_minute=2)
    openai_path = f"{endpoint.base_url}/chat/completions"

    first = azure(endpoint, user("hi"))
    # The same prompt on the OpenAI path is the same request: its one failure is spent.
    second = post(openai_path, {"model": ENDPOINT, **user("hi")})
    third = azure(endpoint, user("hi"))

    assert (first.status, second.status) == (503, 200)
    assert third.status == 429  # one window per endpoint name, whatever the path
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    stats = endpoint.stats()
    assert (stats["faults_injected"], stats["distinct_requests"]) == (1, 1)
    assert stats["by_route"]["chat_completions"] == 3


def api_key(token: str) -> dict[str, str]:
    return {"api-key": token}


MODEL_ROUTES = [
    (f"/serving-endpoints/{ENDPOINT}/invocations", user("hi")),
    ("/serving-endpoints/chat/completions", {"model": ENDPOINT, **user("hi")}),
    ("/serving-endpoints/responses", {"model": ENDPOINT, "input": "hi"}),
    (f"/openai/deployments/{ENDPOINT}/chat/completions{AZURE_QUERY}", user("hi")),
]
MODEL_ROUTE_IDS = ["invocations", "chat-completions", "responses", "azure"]


@pytest.mark.parametrize(("path", "body"), MODEL_ROUTES, ids=MODEL_ROUTE_IDS)
def test_api_key_carries_the_token_on_every_route(
    secured_endpoint: LocalEndpoint, path: str, body: object
) -> None:
    url = secured_endpoint.url + path

    assert post(url, body, headers=api_key(TOKEN)).status == 200
    assert post(url, body, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    wrong = post(url, body, headers=api_key("dapi-wrong"))
    assert "dapi-wrong" not in assert_error(wrong, 403, "PERMISSION_DENIED")
    assert_error(post(url, body, headers=api_key("")), 401, "UNAUTHENTICATED")
    assert_error(post(url, body), 401, "UNAUTHENTICATED")


def test_a_wrong_api_key_is_refused_even_beside_a_right_bearer(
    secured_endpoint: LocalEndpoint,
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", **api_key("dapi-wrong")}

    assert_error(azure(secured_endpoint, user("hi"), headers=headers), 403, "PERMISSION_DENIED")


# --- the model execution hook, in-process with injected models ---

# Bounds every wait on a model thread; a passing test never comes near it.
MODEL_WAIT_S = 5.0


class BlockingModel:
    """Echoes, but each call blocks its thread until `release` is set; records where it ran."""

    blocking = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: set[int] = set()
        self.started = 0
        self.running = 0
        self.peak_running = 0
        self._lock = threading.Lock()

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        with self._lock:
            self.threads.add(threading.get_ident())
            self.started += 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            self.release.wait(MODEL_WAIT_S)
            return EchoModel().complete(messages, max_tokens)
        finally:
            with self._lock:
                self.running -= 1


class InlineModel(EchoModel):
    """The echo model, recording the thread each call ran on (`blocking` left absent)."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        self.threads.add(threading.get_ident())
        return super().complete(messages, max_tokens)


async def ask(client: TestClient[Any, Any], prompt: str) -> str:
    async with client.post(f"/serving-endpoints/{ENDPOINT}/invocations",
                           json=user(prompt)) as reply:
        assert reply.status == 200
        content: str = (await reply.json())["choices"][0]["message"]["content"]
        return content


async def until(condition: Any) -> None:
    """Yield to the loop until `condition()` holds; fail at the deadline."""
    deadline = time.monotonic() + MODEL_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0)  # a zero-length yield so the server's tasks run, not a wait


def test_a_blocking_model_runs_on_one_worker_thread_off_the_loop() -> None:
    model = BlockingModel()
    app = make_app(ServingSettings(endpoint_names=(ENDPOINT,)), model=model)

    async def scenario() -> None:
        async with TestClient(TestServer(app)) as client:
            asks = [asyncio.create_task(ask(client, f"prompt {i}")) for i in range(3)]
            await until(lambda: model.started == 1)
            # The loop is free while the model blocks: other routes still answer.
            async with client.get("/health") as health:
                assert health.status == 200
            assert model.running == 1  # the other two wait for the single worker
            model.release.set()
            assert await asyncio.gather(*asks) == [f"prompt {i}" for i in range(3)]
            assert threading.get_ident() not in model.threads

    asyncio.run(scenario())

    assert (len(model.threads), model.peak_running) == (1, 1)


def test_the_worker_thread_is_shut_down_with_the_app() -> None:
    model = BlockingModel()
    model.release.set()
    app = make_app(ServingSettings(endpoint_names=(ENDPOINT,)), model=model)
    executor = app[STATE].executor
    assert executor is not None

    async def scenario() -> None:
        async with TestClient(TestServer(app)) as client:
            assert await ask(client, "hi") == "hi"

    asyncio.run(scenario())

    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(print)


def test_a_non_blocking_model_runs_inline_on_the_loop() -> None:
    model = InlineModel()
    app = make_app(ServingSettings(endpoint_names=(ENDPOINT,)), model=model)
    assert app[STATE].executor is None
    loop_threads: set[int] = set()

    async def scenario() -> None:
        loop_threads.add(threading.get_ident())
        async with TestClient(TestServer(app)) as client:
            assert await ask(client, "hi") == "hi"

    asyncio.run(scenario())

    assert model.threads == loop_threads


def test_start_up_concurrency_bound_holds_a_blocked_model_slot() -> None:
    model = BlockingModel()
    settings = ServingSettings(endpoint_names=(ENDPOINT,), max_concurrency=1, overload="reject")
    app = make_app(settings, model=model)

    async def scenario() -> None:
        async with TestClient(TestServer(app)) as client:
            first = asyncio.create_task(ask(client, "first"))
            await until(lambda: model.started == 1)
            url = f"/serving-endpoints/{ENDPOINT}/invocations"
            async with client.post(url, json=user("second")) as reply:
                assert reply.status == 503
            model.release.set()
            assert await first == "first"

    asyncio.run(scenario())

    assert app[STATE].stats.rejected_overload == 1
