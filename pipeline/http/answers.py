"""What an endpoint's answer means for its row: a completion, an error of the right class, or
structured output or tool calls that are not what was asked for.

Pure: no session and no event loop, so each rule reads (and is tested) on its own. The client
(`http.client`) calls `parse_answer` on every answer it receives and `check_output` once a row
has its completion; the wire format (`pipeline.wire`) knows the body's shape, `core.errors` the
error classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.chat import Completion
from pipeline.core.errors import MalformedResponse, error_from_response
from pipeline.core.structured import InvalidOutput, OutputFormat
from pipeline.core.tools import Tool, check_calls
from pipeline.wire import WireFormat


def parse_answer(
    wire: WireFormat, status: int, headers: Mapping[str, str], text: str
) -> Completion:
    """The completion in a 2xx answer.

    Raises:
        EndpointError: of the class for a non-2xx status (see `errors.error_from_response`).
        MalformedResponse: a 2xx body that is not the wire format's answer.
    """
    if not 200 <= status < 300:
        raise error_from_response(status, headers, text, wire.error_body)
    try:
        return wire.parse(json.loads(text))
    except ValueError as err:  # json.JSONDecodeError, or a non-UTF-8 body
        raise MalformedResponse(f"HTTP {status}: body is not valid JSON", status=status) from err
    except MalformedResponse as err:
        err.status = status
        raise


def check_output(
    output: OutputFormat | None, tools: Sequence[Tool], completion: Completion
) -> tuple[Any, str | None]:
    """The answer's calls checked against the tools offered (see `pipeline.core.tools`), or its
    structured output parsed: the value, or why the answer is not what was asked for.

    An answer that fails is paid for and kept (an error row with the completion), never retried:
    the model chose it. An answer that calls tools is not checked as structured output (its
    text, if any, is not the answer). Without a format: (None, None).
    """
    try:
        if completion.tool_calls:
            check_calls(tools, completion.tool_calls)
            return None, None
        if output is None:
            return None, None
        return output.check(completion.text), None
    except InvalidOutput as err:
        return None, f"invalid_output: {err}"
