"""The served wire formats, one module each, and the registry the app builds its routes from.

`invocations` (Databricks REST), `chat_completions` (OpenAI Chat Completions, also on Azure
OpenAI's path) and `responses` (OpenAI Responses). A new served format is one module that builds
a `ServedFormat` plus one entry in SERVED_FORMATS; nothing else in `pipeline.serving` names a
format.
"""

from __future__ import annotations

from pipeline.serving.formats import chat_completions, invocations, responses
from pipeline.serving.formats.served_format import ServedFormat

# In /stats order. Invariant (tested): names are unique and no path belongs to two formats.
SERVED_FORMATS: tuple[ServedFormat, ...] = (
    invocations.FORMAT,
    chat_completions.FORMAT,
    responses.FORMAT,
)
FORMAT_NAMES: tuple[str, ...] = tuple(served.name for served in SERVED_FORMATS)

__all__ = ["FORMAT_NAMES", "SERVED_FORMATS", "ServedFormat"]
