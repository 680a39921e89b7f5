"""Turn input rows into chat requests: prompt column, messages column or template.

A row that cannot become a valid request is answered here with an `invalid_input:` error row and
never reaches the endpoint. Text columns arrive as UTF-8 bytes (see `mapper.as_bytes`), so a
value that is not valid UTF-8 is one bad row, not a task that dies converting it. Pure: rows are
plain mappings of column name to Python value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.core.chat import ROLES, ChatRequest, EncodedRequest, Message, RowResult
from pipeline.core.config import EndpointConfig, RequestConfig, SourceConfig, template_fields
from pipeline.core.errors import InvalidInput
from pipeline.core.identity import (
    canonical,
    digest,
    input_fingerprint,
    plain,
    request_fingerprint,
    row_fingerprint,
)
from pipeline.core.images import image_urls

# Bump when the same row and config would be built into another request or given another id or
# fingerprint (a wire body, a message rule, a normalisation): sink rows written before are then
# keyed again rather than recognised by their values (see `RequestBuilder.config_hash`).
BUILDER_VERSION = 1
# Source settings that say where the rows are and how they are split, not what they ask.
_WHERE = ("path", "table", "format", "partitions")
# Source settings added with images: left out of the config's fingerprint when no image column
# is set, so rows written before them keep their `config_hash` and error rows their hash.
_IMAGES = ("image_column", "max_image_bytes")


class RequestBuilder:
    """Builds one `ChatRequest` per row, from the source and request sections of the config.

    Each request carries its fingerprint (`pipeline.core.identity`), built from the body the
    endpoint's wire format sends; its id is the id column's value, or the fingerprint of the
    row's input values.
    """

    def __init__(
        self, source: SourceConfig, request: RequestConfig, endpoint: EndpointConfig
    ) -> None:
        self._source = source
        self._request = request
        self._endpoint = endpoint
        self._wire = endpoint.wire
        self._extra = self._wire.extra_fields(request)
        self._template_fields = template_fields(source.template) if source.template else []
        # What decides whether a row is valid and what it asks, besides its own values: not
        # where the input is read from, nor how it is split.
        roles = {k: v for k, v in dataclasses.asdict(source).items() if k not in _WHERE}
        if source.image_column is None:  # as before images: the same rows, the same config
            for key in _IMAGES:
                del roles[key]
        self._signature = canonical(
            [endpoint.api, endpoint.name, roles, self._extra, request.max_tokens,
             request.temperature]
        )  # fmt: skip
        self.config_hash = digest(canonical([BUILDER_VERSION, self._signature]))
        """The fingerprint of everything besides a row's values that makes its `request_id`
        and `request_hash`: rows written with the same one and holding the same values in
        `columns` were given the ones this builder gives (see `pipeline.spark.recognised`)."""

    @property
    def columns(self) -> list[str]:
        """The input columns a row must provide."""
        return self._source.input_columns()

    def build_all(
        self, columns: Mapping[str, Sequence[Any]], n_rows: int
    ) -> list[ChatRequest | RowResult]:
        """One request (or invalid-input result) for each of `n_rows` column-oriented rows."""
        names = self.columns
        if not names:  # a template without placeholders: every row asks the same
            return [self.build({}) for _ in range(n_rows)]
        rows = zip(*(columns[name] for name in names), strict=True)
        return [self.build(dict(zip(names, values, strict=True))) for values in rows]

    def build(self, row: Mapping[str, Any]) -> ChatRequest | RowResult:
        """The request for `row`, or an error result naming what is wrong with it."""
        images = self._source.image_column
        try:
            text_row = self._as_text(row)
        except InvalidInput as err:  # bytes that are not UTF-8: identified by their escapes
            return self._invalid(self._as_text(row, lenient=True), err)
        try:
            messages = self._messages(text_row)
            if images is not None:
                urls = image_urls(text_row[images], images, self._source.max_image_bytes)
                messages = with_images(messages, urls)
            max_tokens = self._max_tokens(text_row)
            temperature = self._temperature(text_row)
            _check_size(messages, self._source.max_prompt_chars)
        except InvalidInput as err:
            return self._invalid(text_row, err)
        request = ChatRequest(self._request_id(text_row), messages, max_tokens, temperature)
        body = self._wire.body(request, self._endpoint, self._extra)
        fingerprint = request_fingerprint(self._endpoint.api, self._endpoint.name, body)
        return dataclasses.replace(request, request_hash=fingerprint)

    def encoded(self, request: ChatRequest) -> EncodedRequest:
        """`request` with its body encoded as this endpoint's wire format sends it."""
        return EncodedRequest(
            request.request_id,
            self._wire.encoded_body(request, self._endpoint, self._extra),
            request.estimated_prompt_tokens(),
            request.estimated_output_tokens(),
            sum(len(m.images) for m in request.messages),
            request.request_hash,
        )

    def _as_text(self, row: Mapping[str, Any], *, lenient: bool = False) -> dict[str, Any]:
        """`row` with its bytes decoded (see `decoded`), but the image column's, which are
        images (see `listed`).

        Raises:
            InvalidInput: a value is not UTF-8 (unless `lenient`).
        """
        images = self._source.image_column
        return {
            name: listed(value) if name == images
            else decoded(value, "" if lenient else f"column {name!r}", lenient=lenient)
            for name, value in row.items()
        }  # fmt: skip

    def _invalid(self, row: Mapping[str, Any], problem: InvalidInput) -> RowResult:
        return RowResult(
            request_id=self._request_id(row),
            status="error",
            error=f"{problem.code}: {problem}",
            attempts=0,
            request_hash=input_fingerprint(row, self._signature),
        )

    def _request_id(self, row: Mapping[str, Any]) -> str:
        return self._explicit_id(row) or row_fingerprint(row)

    def _messages(self, row: Mapping[str, Any]) -> tuple[Message, ...]:
        source = self._source
        if source.prompt_column is not None:
            prompt = _text(row[source.prompt_column], f"prompt column {source.prompt_column!r}")
            messages: tuple[Message, ...] = (Message("user", prompt),)
        elif source.messages_column is not None:
            messages = parse_messages(row[source.messages_column], source.messages_column)
        else:
            messages = (Message("user", self._render(row)),)
        if source.system_prompt and not any(m.role == "system" for m in messages):
            messages = (Message("system", source.system_prompt), *messages)
        return messages

    def _render(self, row: Mapping[str, Any]) -> str:
        values = {}
        for name in self._template_fields:
            value = row[name]
            if _is_null(value):
                raise InvalidInput(f"template placeholder {{{name}}} is null in this row")
            values[name] = str(value)
        assert self._source.template is not None
        return _text(self._source.template.format_map(values), "rendered template")

    def _max_tokens(self, row: Mapping[str, Any]) -> int | None:
        column = self._source.max_tokens_column
        value = None if column is None else row[column]
        if _is_null(value):
            return self._request.max_tokens
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise InvalidInput(
                f"max_tokens column {column!r} must be a whole number, got {value!r}"
            )
        if value < 1:
            raise InvalidInput(f"max_tokens column {column!r} must be >= 1, got {int(value)}")
        return int(value)

    def _temperature(self, row: Mapping[str, Any]) -> float | None:
        column = self._source.temperature_column
        value = None if column is None else row[column]
        if _is_null(value):
            return self._request.temperature
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
            raise InvalidInput(
                f"temperature column {column!r} must be within [0, 2], got {value!r}"
            )
        return float(value)

    def _explicit_id(self, row: Mapping[str, Any]) -> str | None:
        column = self._source.id_column
        if column is None or _is_null(row[column]):
            return None
        return str(plain(row[column]))  # 7, also when a batch with nulls made it 7.0


def listed(value: Any) -> Any:
    """An array value (Arrow gives a numpy array) as a list; others as they are."""
    if type(value).__name__ == "ndarray":
        return [listed(v) for v in value]
    return None if _is_null(value) else value


def with_images(messages: tuple[Message, ...], urls: tuple[str, ...]) -> tuple[Message, ...]:
    """`messages` with `urls` shown in the last user message.

    Raises:
        InvalidInput: there are images and no user message to show them in.
    """
    if not urls:
        return messages
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise InvalidInput("the row has images but no user message to show them in")
    shown = dataclasses.replace(messages[last], images=urls)
    return (*messages[:last], shown, *messages[last + 1 :])


def decoded(value: Any, where: str, *, lenient: bool = False) -> Any:
    """`value` with every UTF-8 byte string in it (nested in lists and structs too) as text.

    Raises:
        InvalidInput: naming `where`, when bytes are not valid UTF-8 (unless `lenient`, which
            keeps such bytes as escapes).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if lenient:
                return raw.decode("utf-8", errors="backslashreplace")
            raise InvalidInput(
                f"{where} is not valid UTF-8 text (byte {err.start} of {len(raw)})"
            ) from None
    if isinstance(value, Mapping) or hasattr(value, "asDict"):
        items = value.items() if isinstance(value, Mapping) else value.asDict().items()
        return {k: decoded(v, where, lenient=lenient) for k, v in items}
    if isinstance(value, list | tuple) or type(value).__name__ == "ndarray":
        return [decoded(v, where, lenient=lenient) for v in value]
    return value


def parse_messages(value: Any, column: str) -> tuple[Message, ...]:
    """A conversation from an array of {role, content} structs or its JSON text.

    Raises:
        InvalidInput: naming the column and the first thing wrong with the value.
    """
    where = f"messages column {column!r}"
    if _is_null(value):
        raise InvalidInput(f"{where} is null")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"{where} is not valid JSON ({err.msg})") from None
    if isinstance(value, Mapping) or not isinstance(value, Iterable) or isinstance(value, str):
        raise InvalidInput(
            f"{where} must be a list of {{role, content}}, got {type(value).__name__}"
        )
    messages = tuple(_message(item, where, index) for index, item in enumerate(value))
    if not messages:
        raise InvalidInput(f"{where} is an empty list")
    return messages


def _message(item: Any, where: str, index: int) -> Message:
    if not isinstance(item, Mapping) and hasattr(item, "asDict"):
        item = item.asDict()  # a pyspark Row
    if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
        raise InvalidInput(f"{where}[{index}] must be a {{role, content}} object")
    role = item["role"]
    if role not in ROLES:
        raise InvalidInput(
            f"{where}[{index}] has unknown role {role!r} (use {'/'.join(sorted(ROLES))})"
        )
    return Message(role, _text(item["content"], f"{where}[{index}].content"))


def _text(value: Any, where: str) -> str:
    if _is_null(value):
        raise InvalidInput(f"{where} is null")
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be text, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{where} is empty")
    return value


def _check_size(messages: tuple[Message, ...], limit: int) -> None:
    size = sum(len(m.content) for m in messages)
    if size > limit:
        raise InvalidInput(f"prompt has {size} characters, over source.max_prompt_chars={limit}")


def _is_null(value: Any) -> bool:
    # Arrow→pandas turns SQL NULL into None, NaN (numeric columns) or pd.NA (nullable dtypes).
    if value is None or type(value).__name__ == "NAType":
        return True
    return isinstance(value, float) and math.isnan(value)
