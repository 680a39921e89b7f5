"""Images in a row (`source.image_column`): what the row's user message shows the model.

A value is an image URL (http, https, or a `data:image/...` URL), the bytes of an image, or an
array of either. Bytes become a `data:` URL whose MIME type is sniffed from the bytes' magic
number (PNG, JPEG, GIF or WEBP: what the chat APIs take); bytes that are none of those, a URL of
another kind, and a row whose images are larger, as sent, than `source.max_image_bytes` (the
endpoint's payload limit: 4 MiB on Databricks Model Serving) are `invalid_input:` rows, never
sent. Each wire format (`pipeline.wire`) says how the images go out. Pure.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from pipeline.core.errors import InvalidInput

# Magic number -> MIME type, for the formats the OpenAI and Databricks chat APIs accept.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_URL_PREFIXES = ("http://", "https://", "data:image/")
_URL_PREFIX_BYTES = tuple(prefix.encode() for prefix in _URL_PREFIXES)


def sniff_mime(data: bytes) -> str | None:
    """The image MIME type of `data` from its first bytes, or None."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_urls(value: Any, column: str, max_bytes: int) -> tuple[str, ...]:
    """The URLs to send for a row's `value` of the image column (none for null).

    Raises:
        InvalidInput: naming the column (and the item of an array) and what is wrong.
    """
    if value is None:
        return ()
    items = _items(value)
    urls = tuple(_url(item, _where(column, index, items)) for index, item in enumerate(items))
    size = sum(len(url) for url in urls)
    if size > max_bytes:
        raise InvalidInput(
            f"image column {column!r} holds {size} bytes of images as sent, over "
            f"source.max_image_bytes={max_bytes}"
        )
    return urls


def _items(value: Any) -> list[Any]:
    if isinstance(value, bytes | bytearray | memoryview | str):
        return [value]
    if isinstance(value, Iterable):  # a list, or the numpy array Arrow gives an array column
        return [item for item in value if item is not None]
    return [value]


def _where(column: str, index: int, items: list[Any]) -> str:
    return f"image column {column!r}" + (f"[{index}]" if len(items) > 1 else "")


def _url(item: Any, where: str) -> str:
    if isinstance(item, bytearray | memoryview):
        item = bytes(item)
    if isinstance(item, bytes):
        if item[:16].lower().startswith(_URL_PREFIX_BYTES):
            item = item.decode("utf-8", errors="replace")  # a text column, sent as bytes
        else:
            return _data_url(item, where)
    if isinstance(item, str):
        if not item.strip().lower().startswith(_URL_PREFIXES):
            raise InvalidInput(
                f"{where} must be an http(s) or data:image URL, or image bytes; got text "
                f"starting {item[:12]!r}"
            )
        return item.strip()
    raise InvalidInput(f"{where} must be a URL or image bytes, got {type(item).__name__}")


def _data_url(data: bytes, where: str) -> str:
    mime = sniff_mime(data)
    if mime is None:
        raise InvalidInput(
            f"{where} holds {len(data)} bytes that are not a PNG, JPEG, GIF or WEBP image"
        )
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
