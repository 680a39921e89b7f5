"""The one coercion mechanism (config YAML and the endpoint's settings), on shapes the job config
does not use itself."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.core.coerce import Dialect, build
from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class Shapes:
    sizes: tuple[int, ...] = ()
    names: Sequence[str] = ()
    steps: list[float] = field(default_factory=list)
    weights: Mapping[str, float] = field(default_factory=dict)
    either: int | str | None = None
    flag: Literal[1, "one"] = 1
    derived: int = field(init=False, default=0)


def shapes_error(**raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(Shapes, raw, Dialect(), "shapes")
    return caught.value


def test_lists_become_tuples_and_items_are_named_by_index() -> None:
    shapes = build(Shapes, {"sizes": [1, 2], "names": ["a"], "steps": [1, 0.5]}, Dialect())
    assert (shapes.sizes, shapes.names, shapes.steps) == ((1, 2), ("a",), [1.0, 0.5])
    assert shapes_error(sizes=[1, "2"]).key == "shapes.sizes[1]"
    assert shapes_error(names="ab").key == "shapes.names"


def test_mapping_values_are_checked_by_their_hint() -> None:
    assert build(Shapes, {"weights": {"a": 1}}, Dialect()).weights == {"a": 1.0}
    assert shapes_error(weights={"a": "heavy"}).key == "shapes.weights.a"


def test_a_union_takes_the_first_type_that_fits() -> None:
    assert build(Shapes, {"either": "x"}, Dialect()).either == "x"
    err = shapes_error(either=1.5)
    assert str(err) == "shapes.either: must be an integer or a string, got float 1.5"


def test_a_literal_choice_is_matched_by_type_too() -> None:
    assert shapes_error(flag=True).key == "shapes.flag"


def test_a_field_computed_by_its_class_is_not_a_key() -> None:
    assert "unknown key" in str(shapes_error(derived=1))
