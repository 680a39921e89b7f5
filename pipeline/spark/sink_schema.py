"""Whether a run's rows can join the rows already in the sink, decided before the first request.

New columns are fine: Delta adds them on the append (schema evolution), Parquet readers merge
the files' schemas, and a Parquet catalog table gets them with `ALTER TABLE ... ADD COLUMNS`
before the run sends anything (see `added_columns`); older rows read them as null. Columns the
run no longer writes are fine too (null in its rows). A column whose type changed (an id that
was a number and is text now, a `parsed` struct where the sink holds JSON text) is not:
appending would fail after every request of the chunk was paid for, so the run is refused with
one line naming the sink and the columns. Pure: Spark types in, a list of problems out.
"""

from __future__ import annotations

from pyspark.sql.types import ArrayType, DataType, MapType, NullType, StructField, StructType

from pipeline.core.errors import ConfigError


def type_changes(existing: StructType, new: StructType) -> list[str]:
    """The columns (nested fields too, as `a.b`) whose type in `new` differs from `existing`,
    as `name (sink: T, now: U)`; an empty list when `new` rows can be appended."""
    return _struct_changes(existing, new, prefix="")


def added_columns(existing: StructType, new: StructType) -> list[StructField]:
    """The top-level columns of `new` that `existing` lacks."""
    present = {name.lower() for name in existing.fieldNames()}
    return [field for field in new.fields if field.name.lower() not in present]


def check_appendable(existing: StructType, new: StructType, where: str) -> None:
    """Refuse a run whose rows the sink `where` cannot take: a column whose type changed.

    Raises:
        ConfigError: naming `sink` and the columns.
    """
    problems = type_changes(existing, new)
    if problems:
        raise ConfigError(
            "sink",
            f"{where} cannot take this run's rows: {'; '.join(problems)}. Write to another "
            "sink, or set sink.mode=overwrite to replace it",
        )


def _struct_changes(existing: StructType, new: StructType, prefix: str) -> list[str]:
    # Spark and Delta resolve column names without regard to case.
    old_fields = {f.name.lower(): f for f in existing.fields}
    changes = []
    for field in new.fields:
        old = old_fields.get(field.name.lower())
        if old is not None:
            changes += _changes(old.dataType, field.dataType, prefix + field.name)
    return changes


def _changes(old: DataType, new: DataType, name: str) -> list[str]:
    if isinstance(new, NullType):  # a column of nulls only: it takes any type
        return []
    if isinstance(old, StructType) and isinstance(new, StructType):
        return _struct_changes(old, new, prefix=name + ".")
    if isinstance(old, ArrayType) and isinstance(new, ArrayType):
        return _changes(old.elementType, new.elementType, name + "[]")
    if isinstance(old, MapType) and isinstance(new, MapType):
        return [
            *_changes(old.keyType, new.keyType, name + "{key}"),
            *_changes(old.valueType, new.valueType, name + "{value}"),
        ]
    if old.simpleString() == new.simpleString():  # nullability does not matter to an append
        return []
    return [f"{name} (sink: {old.simpleString()}, now: {new.simpleString()})"]
