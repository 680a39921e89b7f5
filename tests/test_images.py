"""Images in a row: the values an image column may hold, how each format sends them, and a job
end to end against the local endpoint (the echo model says what it was shown; a bad image is an
error row that is never sent)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from pipeline.core.chat import ChatRequest, Message
from pipeline.core.errors import ConfigError, InvalidInput
from pipeline.core.images import image_urls, sniff_mime
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.dryrun import dry_run
from pipeline.wire import wire_for
from tests.test_client import send, settings
from tests.test_job import job, run
from tests.test_prompts import ENDPOINT, build, builder, error

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
JPEG = b"\xff\xd8\xff\xe0" + bytes(30)
GIF = b"GIF89a" + bytes(10)
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(10)
URL = "https://example.com/cat.png"


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("data", "mime"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
     (b"%PDF-1.7", None), (b"", None)],
)  # fmt: skip
def test_the_mime_type_is_sniffed_from_the_bytes(data: bytes, mime: str | None) -> None:
    assert sniff_mime(data) == mime


def test_a_value_may_be_a_url_bytes_or_an_array_of_either() -> None:
    assert image_urls(None, "img", 10_000) == ()
    assert image_urls(URL, "img", 10_000) == (URL,)
    assert image_urls(URL.encode(), "img", 10_000) == (URL,)  # a text column, as bytes
    assert image_urls(PNG, "img", 10_000) == (data_url("image/png", PNG),)
    mixed = np.array([URL, JPEG, None], dtype=object)  # Arrow's array, with a null item
    assert image_urls(mixed, "img", 10_000) == (URL, data_url("image/jpeg", JPEG))
    given = data_url("image/gif", GIF)
    assert image_urls([given], "img", 10_000) == (given,)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"%PDF-1.7 not an image", "image column 'img' holds 21 bytes that are not a PNG"),
        ([PNG, b"junk"], r"image column 'img'\[1\] holds 4 bytes"),
        ("cat.png", "must be an http\\(s\\) or data:image URL"),
        ("ftp://example.com/cat.png", "must be an http\\(s\\) or data:image URL"),
        (PNG * 40, "holds 2582 bytes of images as sent, over source.max_image_bytes=1000"),
        (3, "must be a URL or image bytes, got int"),
    ],
)
def test_what_cannot_be_sent_is_refused_naming_the_column(value: object, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        image_urls(value, "img", 1000)


def test_the_last_user_message_shows_the_images() -> None:
    b = builder(messages_column="m", image_column="img")
    turns = '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},' \
            ' {"role": "user", "content": "What is this?"}]'  # fmt: skip
    request = build(b, m=turns, img=PNG)
    assert request.messages[0] == Message("user", "Hi")
    assert request.messages[2] == Message("user", "What is this?", (data_url("image/png", PNG),))
    other = build(b, m=turns, img=JPEG)
    assert other.request_hash != request.request_hash  # another image, another request
    assert build(b, m=turns, img=None).messages[2].images == ()


def test_a_bad_image_is_an_invalid_row_with_the_id_it_has_when_fixed() -> None:
    strict, lenient = builder(prompt_column="q", image_column="img", max_image_bytes=100), \
        builder(prompt_column="q", image_column="img")  # fmt: skip
    assert "over source.max_image_bytes=100" in error(strict, q="Look", img=PNG * 3)
    refused = strict.build({"q": "Look", "img": PNG * 3})
    accepted = build(lenient, q="Look", img=PNG * 3)
    # One input row, one output row: the same id whether or not it could be sent.
    assert refused.request_id == accepted.request_id


@pytest.mark.parametrize(
    ("api", "parts"),
    [
        ("invocations", [{"type": "text", "text": "What is this?"},
                         {"type": "image_url", "image_url": {"url": URL}}]),
        ("chat_completions", [{"type": "text", "text": "What is this?"},
                              {"type": "image_url", "image_url": {"url": URL}}]),
        ("responses", [{"type": "input_text", "text": "What is this?"},
                       {"type": "input_image", "image_url": URL}]),
    ],
)  # fmt: skip
def test_each_format_sends_content_parts(api: str, parts: list[dict[str, object]]) -> None:
    request = ChatRequest("r", (Message("system", "Be brief."),
                                Message("user", "What is this?", (URL,))), 5, None)  # fmt: skip
    body = wire_for(api).body(request, ENDPOINT, {})
    conversation = body["input" if api == "responses" else "messages"]
    assert conversation == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": parts}]  # fmt: skip


def test_a_missing_image_column_stops_the_job_before_sending(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    path = str(tmp_path / "in")
    spark.createDataFrame([(1, "hi")], "id long, q string").write.parquet(path)
    config = job(echo, {"path": path, "prompt_column": "q", "image_column": "photo"},
                 {"path": str(tmp_path / "out")})  # fmt: skip
    with pytest.raises(ConfigError, match=r"source\.image_column: column 'photo' is not in"):
        run(spark, config)
    assert echo.stats()["requests_total"] == 0


@pytest.mark.parametrize("api", ["invocations", "chat_completions", "responses"])
def test_every_format_shows_the_endpoint_its_images(echo: LocalEndpoint, api: str) -> None:
    request = ChatRequest("r", (Message("user", "Look", (data_url("image/png", PNG), URL)),),
                          20, None)  # fmt: skip
    result = send(settings(echo, api), request)
    assert result.status == "ok", result.error
    assert result.completion is not None
    assert result.completion.text == f"Look (2 images: {len(PNG)} bytes, url)"


def test_images_reach_the_model_and_bad_ones_are_never_sent(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [
        (1, "Describe", [PNG, JPEG]),
        (2, "Describe", [URL.encode()]),
        (3, "Describe", None),
        (4, "Describe", [b"not an image"]),
        (5, "Describe", [PNG * 200]),
    ]
    path = str(tmp_path / "in")
    spark.createDataFrame(rows, "id long, q string, photos array<binary>").write.parquet(path)
    config = job(
        echo,
        {"path": path, "id_column": "id", "prompt_column": "q", "image_column": "photos",
         "max_image_bytes": 5000},
        {"path": str(tmp_path / "out"), "format": "delta"},
        endpoint={"api": "responses"},
    )  # fmt: skip
    planned = dry_run(config, spark)
    assert (planned.requests, planned.invalid_rows, planned.images) == (3, 2, 3)
    assert "3 requests would be sent with 3 images" in planned.render()
    summary, out = run(spark, config)
    got = {row.id: row for row in out.collect()}
    assert got[1].completion == f"Describe (2 images: {len(PNG)} bytes, {len(JPEG)} bytes)"
    assert got[2].completion == "Describe (1 image: url)"
    assert got[3].completion == "Describe"
    assert got[1].photos == [PNG, JPEG]  # the input column as it was
    for bad, says in ((4, "holds 12 bytes that are not a PNG"), (5, "over source.max_image")):
        assert got[bad].status == "error" and got[bad].attempts == 0
        assert got[bad].error.startswith("invalid_input: image column 'photos'") and says in (
            got[bad].error
        )
    assert echo.stats()["requests_total"] == 3
    assert summary.images == 3  # sent with rows 1 and 2; the bad ones were never sent
