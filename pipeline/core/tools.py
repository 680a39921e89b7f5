"""Function tools: `request.tools` as the model is offered them, and every call it makes checked.

A tool is a name, a description and a JSON Schema for its arguments, validated when the config
is read (so a bad schema stops the job before Spark starts, naming `request.tools[i]`). The
model's answer may call tools instead of (or besides) answering in text: each call's arguments
must be JSON matching the named tool's schema. A call that does not (unknown tool, arguments
that are not JSON or do not match) makes the row an `invalid_output:` error with the answer
kept, as structured output does: the model chose it, so it is paid for and never retried. Pure:
each wire format (`pipeline.wire`) says how tools go out and calls come back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.structured import InvalidOutput, check_schema, validated

# OpenAI's rule for a function name (Databricks and most compatible servers share it).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# `request.tool_choice` values that are not a tool's name.
CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Tool:
    """One function the model may call (`request.tools[i]`)."""

    name: str
    description: str | None = None
    # JSON Schema of the arguments object; null: the function takes none.
    parameters: Mapping[str, Any] | None = None
    # Ask the endpoint to enforce `parameters` exactly (OpenAI `strict`); null: its default.
    strict: bool | None = None

    def definition(self) -> dict[str, Any]:
        """The function as both OpenAI shapes describe it (name, description, parameters,
        strict), without the fields left unset."""
        fields = {
            "name": self.name,
            "description": self.description,
            "parameters": None if self.parameters is None else dict(self.parameters),
            "strict": self.strict,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call in an answer: the arguments as the model wrote them (JSON text)."""

    name: str
    arguments: str
    call_id: str | None = None


def check_tools(tools: Sequence[Tool], tool_choice: str | None) -> None:
    """Refuse tools the endpoint would refuse, or that no answer could be checked against.

    Raises:
        ConfigError: naming `request.tools[i].<key>` or `request.tool_choice`.
    """
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        key = f"request.tools[{index}]"
        if not _NAME.match(tool.name):
            raise ConfigError(
                f"{key}.name", f"must be 1-64 letters, digits, _ or -, got {tool.name!r}"
            )
        if tool.name in seen:
            raise ConfigError(f"{key}.name", f"{tool.name!r} is the name of an earlier tool")
        seen.add(tool.name)
        if tool.parameters is not None:
            problem = check_schema(tool.parameters)
            if problem is not None:
                raise ConfigError(f"{key}.parameters", f"is not a valid JSON Schema: {problem}")
            if tool.parameters.get("type") != "object":
                raise ConfigError(
                    f"{key}.parameters", "must be a JSON Schema with type: object (the arguments)"
                )
    if tool_choice is None:
        return
    if not tools:
        raise ConfigError("request.tool_choice", "is set but request.tools is empty")
    if tool_choice not in CHOICES and tool_choice not in seen:
        raise ConfigError(
            "request.tool_choice",
            f"must be {', '.join(CHOICES)} or a tool's name ({', '.join(sorted(seen))}), "
            f"got {tool_choice!r}",
        )


def check_calls(tools: Sequence[Tool], calls: Sequence[ToolCall]) -> None:
    """Every call names a tool offered and carries arguments that match its schema.

    Raises:
        InvalidOutput: naming the call (by its place and tool) and what is wrong.
    """
    by_name = {tool.name: tool for tool in tools}
    for index, call in enumerate(calls):
        where = f"tool call {index} ({call.name})"
        tool = by_name.get(call.name)
        if tool is None:
            offered = ", ".join(by_name) or "none"
            raise InvalidOutput(f"{where} names no tool offered (offered: {offered})")
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as err:
            raise InvalidOutput(f"{where}: arguments are not JSON ({err})") from None
        if not isinstance(arguments, dict):
            raise InvalidOutput(
                f"{where}: arguments must be a JSON object, got {type(arguments).__name__}"
            )
        if tool.parameters is not None:
            try:
                validated(tool.parameters, arguments)
            except InvalidOutput as err:
                raise InvalidOutput(f"{where}: arguments {err}") from None
