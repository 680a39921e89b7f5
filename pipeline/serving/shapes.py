"""What every route shares on the wire: the Databricks error body, its codes, Retry-After, ids.

Each format's own answer bodies live in its module under `formats/`; this module holds what
does not depend on the format. Pure functions, except `new_id` (random), which every format
uses for its answer ids.
"""

from __future__ import annotations

import secrets
from typing import Any

from pipeline.serving.chat_model import ModelOutput

# Decimals kept in a Retry-After value: sub-millisecond precision is noise for a retry delay.
_RETRY_AFTER_DECIMALS = 6


def new_id(prefix: str) -> str:
    """A fresh random id such as `chatcmpl-<hex>`, `resp_<hex>`, `msg_<hex>` or `rs_<hex>`."""
    return f"{prefix}{secrets.token_hex(12)}"


def error_body(error_code: str, message: str) -> dict[str, str]:
    """The Databricks error body."""
    return {"error_code": error_code, "message": message}


def error_code_for_status(status: int) -> str:
    """The Databricks error code Model Serving sends with an HTTP error status."""
    if status == 429:
        return "REQUEST_LIMIT_EXCEEDED"
    if status == 500:
        return "INTERNAL_ERROR"
    if 500 <= status <= 599:
        return "TEMPORARILY_UNAVAILABLE"
    return "BAD_REQUEST"


def retry_after_header(seconds: float) -> str:
    """A Retry-After value in plain decimal seconds ("0.01", "2"), never exponent notation.

    Real servers send whole seconds; fractions let tests retry fast, and our client parses floats.
    """
    return f"{seconds:.{_RETRY_AFTER_DECIMALS}f}".rstrip("0").rstrip(".")


def usage_body(
    output: ModelOutput, prompt_key: str, completion_key: str, details_key: str
) -> dict[str, Any]:
    """`usage` under the format's names; with reasoning, its tokens under `details_key`
    (`completion_tokens_details`, `output_tokens_details`)."""
    usage: dict[str, Any] = {
        prompt_key: output.prompt_tokens,
        completion_key: output.completion_tokens,
        "total_tokens": output.prompt_tokens + output.completion_tokens,
    }
    if output.reasoning is not None:
        usage[details_key] = {"reasoning_tokens": output.reasoning_tokens}
    return usage
