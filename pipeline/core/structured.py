"""Structured output: `request.response_format` on the wire, and every answer checked.

`json_object` asks for any JSON object; `json_schema` for JSON matching `request.json_schema`.
Each answer is parsed and (with a schema) validated with `jsonschema`; one that does not parse
or match becomes an error row (`invalid_output: ...`, the answer kept in `completion`), never a
silently wrong value. With a schema the output gets a `parsed` column (see
`mapper.parsed_type`). No Spark here: the config validates schemas before Spark starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema


class InvalidOutput(ValueError):
    """An answer that is not the JSON that was asked for."""


@dataclass(frozen=True)
class OutputFormat:
    """The format every answer must have; picklable (Spark ships it to the tasks)."""

    kind: str  # json_object | json_schema
    schema: Mapping[str, Any] | None = None
    name: str = "output"

    def check(self, text: str) -> Any:
        """The answer parsed (and validated against the schema).

        Raises:
            InvalidOutput: saying what is wrong, and where.
        """
        try:
            value = json.loads(text)
        except ValueError as err:
            raise InvalidOutput(f"not JSON ({err})") from None
        if self.schema is None:
            if not isinstance(value, dict):
                raise InvalidOutput(f"a JSON object was asked for, got {type(value).__name__}")
            return value
        return validated(self.schema, value)


def validated(schema: Mapping[str, Any], value: Any) -> Any:
    """`value`, once it matches `schema`.

    Raises:
        InvalidOutput: `at <json path>: <what is wrong>`, for the error that best explains it.
    """
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
    if error is not None:
        raise InvalidOutput(f"at {error.json_path}: {error.message}")
    return value


def check_schema(schema: Mapping[str, Any]) -> str | None:
    """What is wrong with `schema` as a JSON Schema, or None."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except jsonschema.exceptions.SchemaError as err:
        return str(err.message)
    return None


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: Mapping[str, Any]) -> Any:
    # Built once per task and schema: building one compiles the schema.
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema.validators.validator_for(schema)(schema)
    return _VALIDATORS[key]
