"""Text across the Python boundary, and columns of any name through `mapInPandas`.

Text crosses into Python as bytes (`as_bytes`, and back with `as_text`): Arrow would fail the
whole task on one value that is not valid UTF-8, where the request builder makes it one
`invalid_input:` row; the other columns pass through byte for byte. pyspark hands
`mapInPandas` its columns by bare name, which a dot in a name breaks (`map_in_pandas`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DataType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from pipeline.spark.archives import read_once

read_once()  # this module runs in every task (see `archives`)

BatchMapper = Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]


def column(name: str) -> Column:
    """The column called `name`, whatever characters it holds (dots, spaces, backticks)."""
    return F.col("`" + name.replace("`", "``") + "`")


def bytes_type(dtype: DataType) -> DataType:
    """`dtype` with every string in it, nested ones too, as binary (the same bytes)."""
    if isinstance(dtype, StringType):
        return BinaryType()
    if isinstance(dtype, ArrayType):
        return ArrayType(bytes_type(dtype.elementType), dtype.containsNull)
    if isinstance(dtype, MapType):
        return MapType(
            bytes_type(dtype.keyType), bytes_type(dtype.valueType), dtype.valueContainsNull
        )
    if isinstance(dtype, StructType):
        return StructType(
            [StructField(f.name, bytes_type(f.dataType), f.nullable) for f in dtype.fields]
        )
    return dtype


def as_bytes(frame: DataFrame) -> DataFrame:
    """`frame` with its text as UTF-8 bytes (see the module docstring); `as_text` undoes it."""
    return _cast_to(frame, {f.name: bytes_type(f.dataType) for f in frame.schema.fields})


def as_text(frame: DataFrame, schema: StructType) -> DataFrame:
    """`frame` with the columns of `schema` back in their types there (bytes back to text)."""
    return _cast_to(frame, {f.name: f.dataType for f in schema.fields})


def _cast_to(frame: DataFrame, types: Mapping[str, DataType]) -> DataFrame:
    current = {f.name: f.dataType for f in frame.schema.fields}
    return frame.select(*(
        column(name).cast(types[name]).alias(name)
        if name in types and types[name] != current[name] else column(name)
        for name in frame.columns
    ))  # fmt: skip


def map_in_pandas(frame: DataFrame, mapper: BatchMapper, schema: StructType | str) -> DataFrame:
    """`frame.mapInPandas(mapper, schema)` for columns of any name.

    pyspark hands `mapInPandas` its input columns by their bare names, which a dot or a
    backtick in a name breaks (`the.prompt` reads as field `prompt` of column `the`): such
    columns cross under plain names, and `mapper` sees them under their own again.
    """
    names = frame.columns
    if not any("." in name or "`" in name for name in names):
        return frame.mapInPandas(mapper, schema)
    plain_names = [f"_batch_chat_{i}" for i in range(len(names))]
    crossing = frame.select(*(column(n).alias(p) for n, p in zip(names, plain_names, strict=True)))

    def renamed(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in frames:
            batch.columns = names
            yield batch

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        return mapper(renamed(frames))

    return crossing.mapInPandas(map_batches, schema)
