"""Input rows a merge run need not key in Python: the sink answers them, as the JVM can tell from
their values alone.

Every row the job writes carries `config_hash` (see `RequestBuilder.config_hash`): the fingerprint
of everything besides a row's own values that makes its `request_id` and `request_hash` (the
source's column roles, template and system prompt, the request parameters, the endpoint and its
API, the version of the request builder). An input row whose request columns hold the values of
a sink row stamped with this run's `config_hash` would be given that row's id and hash, so a
join finds the answered rows of a nightly rerun without building one request.

The values meet by their fingerprint: two 64-bit hashes of them (xxHash64 under two seeds, 128
bits, as `request_hash` keeps 128 bits of its SHA-256), computed where the rows are read. Only
the fingerprints of the sink's rows travel to the join, never their prompts: with 2 KB prompts
at 300k rows, recognising moved 592-599 MB of the sink's values and took 6.6-8.5 s; with the
fingerprints, 5.8 MB and 3.6-4.2 s (a bare anti-join of the ids: 0.65-0.9 s). The hashed
value tells every null and every array's length apart (Spark's hash skips a null, so (x, null)
and (null, x) would hash alike); floating point counts by its spelling (-0.0 and 0.0 are two
request bodies). A request column whose type cannot be hashed that way (a map, floating point
inside a nested value) leaves every row to the keying pass.

Copies count as they do in planning (see `pipeline.spark.chunks`): input values held n times take
at most n such sink rows. Most values are held once: those rows are found with one anti-join of
the input with the sink, the pass that also counts the input rows of each fingerprint (the join
partitions the input by it anyway); only the rows whose fingerprint the input holds more than
once are counted against the sink.
The rows left (new values, changed ones, surplus copies, rows of a sink written under another
config) are keyed in Python and planned as before, against the sink rows the recognised ones
did not take. An input under `sink.recognise_from_rows` rows is keyed in full: the join's
few Spark jobs cost more than keying it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    FloatType,
    MapType,
    StructType,
)

from pipeline.spark.columns import CONFIG_HASH, IDENTITY_COLUMNS
from pipeline.spark.crossing import column
from pipeline.spark.session import cached

# A row's fingerprint: two 64-bit hashes of its request columns (see `fingerprint`).
HASH = "_values_hash"
HASH2 = "_values_hash2"
KEYS = [HASH, HASH2]
# The second hash's seed: xxHash64 of this text, as Spark's hash chains its arguments.
_SECOND_SEED = "batch-chat recognised values"
HELD = "_held"  # sink rows that hold those values
ASKED = "_asked"  # input rows that hold them
TAKEN = "_taken"  # sink rows of a key that recognised input rows took
_SHARED = "_shared"  # input rows that share a row's fingerprint
_COPY = "_value_copy"
# Types a row's values hold by their spelling (-0.0 and 0.0 are two requests), not as they are.
_SPELLED = (FloatType, DoubleType)
_IN, _SINK = "_in", "_sink"  # aliases of the two sides of a join


@dataclass(frozen=True)
class Recognised:
    """The input split by what the sink answers."""

    # The input rows to key and plan (the source's columns).
    rest: DataFrame
    # The input's fingerprints, and the sink rows stamped with this run's config with theirs
    # (see `fingerprint`).
    _asked: DataFrame
    _stamped: DataFrame
    # Kept while the run plans: the rows the join left (until `rest` is read, see `read`), the
    # values the sink holds fewer times than the input, then what `taken` looked up.
    kept: list[DataFrame]

    def read(self) -> None:
        """`rest` was read into a frame of its own (keyed, kept): the rows the join left need
        not be kept any longer."""
        left = self.kept.pop(0)
        left.unpersist()

    def taken(self, ids: DataFrame) -> DataFrame:
        """request_id, request_hash, _taken: how many sink rows of a key the recognised input
        rows took, for the keys whose request_id is in `ids` (the plan's keys, few in a
        nightly rerun: this reads both tables once more rather than keeping the split)."""
        held = filled(
            self._stamped.join(ids.select("request_id").distinct(), "request_id", "left_semi")
            .groupBy(*KEYS, *IDENTITY_COLUMNS)
            .agg(F.count(F.lit(1)).alias(HELD)),
            self.kept,
        )
        asked = (
            self._asked.join(held.select(*KEYS), KEYS, "left_semi")
            .groupBy(*KEYS)
            .agg(F.count(F.lit(1)).alias(ASKED))
        )
        took = F.least(F.col(ASKED), F.col(HELD))
        return held.join(asked, KEYS).groupBy(*IDENTITY_COLUMNS).agg(F.sum(took).alias(TAKEN))


def recognise(
    frame: DataFrame,
    answers: DataFrame,
    columns: Sequence[str],
    config_hash: str,
) -> Recognised | None:
    """Split `frame` (the input) by the sink rows `answers` (those that count as answered: `ok`
    ones, or every row when errors are not retried) stamped with `config_hash`, comparing the
    request columns `columns` by their fingerprint; None when the sink cannot tell (no row
    stamped with this `config_hash`, no request column, or one that cannot be hashed)."""
    if not {CONFIG_HASH, "request_hash"} <= set(answers.columns) or not columns:
        return None
    asked_print = fingerprint(frame, columns)
    held_print = fingerprint(answers, columns)
    if asked_print is None or held_print is None:
        return None
    inputs = list(map(column, frame.columns))
    asked = frame.select(*inputs, *asked_print)
    # A row is stamped in the write that records its request_hash (see `columns.stamp`), so a
    # stamped row has one: the column's long digests need not be read to find those rows.
    stamped = answers.filter(F.col(CONFIG_HASH) == config_hash).select(
        *IDENTITY_COLUMNS, *held_print
    )
    if stamped.isEmpty():  # another config (file statistics say so at once): nothing to find
        return None
    kept: list[DataFrame] = []
    # One pass over both tables: the join partitions the input by the first hash anyway, so
    # each row also learns how many input rows share it. A value held once is answered when a
    # stamped row holds its fingerprint; the rows of a hash held more than once (copies of one
    # value, or values that share a hash: few or none) all stay, to be counted below.
    shared = asked.withColumn(_SHARED, F.count(F.lit(1)).over(Window.partitionBy(HASH)))
    alone = _side(_IN, _SHARED) == 1
    answered = (_side(_IN, HASH) == _side(_SINK, HASH)) & F.when(
        alone, _side(_IN, HASH2) == _side(_SINK, HASH2)
    )
    # Sort-merge: the input is partitioned and sorted by the hash already, so only the sink's
    # 16 bytes a row move. The fingerprints of a million sink rows look small enough to Spark
    # to broadcast, and collecting them on the driver cost more (0.3-0.5 s at 1M rows).
    fingerprints = stamped.select(*KEYS).hint("merge")
    left = shared.alias(_IN).join(fingerprints.alias(_SINK), answered, "left_anti")
    # Kept (first in `kept`) until the rest is keyed: filled by counting the copies among them.
    left = cached(left)
    kept.append(left)
    try:
        copied = left.filter(F.col(_SHARED) > 1)
        rest = left.filter(F.col(_SHARED) == 1).select(*inputs)
        if copied.count():
            held = stamped.join(copied.select(*KEYS).distinct(), KEYS, "left_semi")
            surplus = _surplus(frame, copied.select(*inputs, *KEYS), held, kept)
            rest = rest.unionByName(surplus.select(*inputs))
    except BaseException:
        release(kept)
        raise
    return Recognised(rest, asked.select(*KEYS), stamped, kept)


def _side(alias: str, name: str) -> Column:
    return F.col(f"{alias}.{name}")


def _surplus(
    frame: DataFrame, asked: DataFrame, stamped: DataFrame, kept: list[DataFrame]
) -> DataFrame:
    """The rows of `asked` (rows of `frame` with their fingerprint, see `recognise`) beyond the
    number of times `stamped` holds their values."""
    held = stamped.groupBy(*KEYS).agg(F.count(F.lit(1)).alias(HELD))
    counts = asked.groupBy(*KEYS).agg(F.count(F.lit(1)).alias(ASKED))
    # Values the sink holds fewer times than the input (most often: not at all), found first.
    short = filled(
        counts.join(held, KEYS, "left")
        .filter(F.col(HELD).isNull() | (F.col(ASKED) > F.col(HELD)))
        .select(*KEYS, F.coalesce(F.col(HELD), F.lit(0)).alias(HELD)),
        kept,
    )
    others = [column(f.name) for f in frame.schema.fields if not _holds(f.dataType, (MapType,))]
    order = F.xxhash64(*others) if others else F.lit(0)
    copy = F.row_number().over(Window.partitionBy(*KEYS).orderBy(order))
    return asked.join(short, KEYS).withColumn(_COPY, copy).filter(F.col(_COPY) > F.col(HELD))


def filled(frame: DataFrame, kept: list[DataFrame]) -> DataFrame:
    """`frame`, computed now and kept (added to `kept`): a later join then knows its size and
    looks its rows up while it scans a table, rather than shuffling the table (and stages that
    run at once never compute it twice)."""
    frame = cached(frame)
    kept.append(frame)
    frame.count()
    return frame


def fingerprint(frame: DataFrame, columns: Sequence[str]) -> list[Column] | None:
    """The two hashes (HASH, HASH2) of `columns` of `frame`, equal for two rows when their
    values are (floating point by its spelling); None when a column cannot be hashed so."""
    types = {f.name: f.dataType for f in frame.schema.fields}
    parts = []
    for name in columns:
        kind = types.get(name)
        if kind is None or _holds(kind, (MapType,)):
            return None
        if not isinstance(kind, _SPELLED) and _holds(kind, _SPELLED):
            return None
        parts.append(_told_apart(column(name), kind).alias(name))
    values = F.struct(*parts)
    return [F.xxhash64(values).alias(HASH), F.xxhash64(F.lit(_SECOND_SEED), values).alias(HASH2)]


def _told_apart(value: Column, kind: DataType) -> Column:
    """`value` (of type `kind`) with whether it is null, and each array with its length: Spark's
    hash skips nulls, and hashes an array as its elements one after the other, so without them
    (x, null) and (null, x), or (["a", "b"], null) and (["a"], "b"), would hash alike."""
    inner: Column
    if isinstance(kind, _SPELLED):
        inner = value.cast("string")
    elif isinstance(kind, ArrayType):
        element = kind.elementType
        inner = F.struct(F.size(value), F.transform(value, lambda x: _told_apart(x, element)))
    elif isinstance(kind, StructType):
        inner = F.struct(*[_told_apart(value.getField(f.name), f.dataType) for f in kind.fields])
    else:
        inner = value
    return F.struct(value.isNull(), inner)


def _holds(kind: DataType, types: tuple[type[DataType], ...]) -> bool:
    """Whether `kind` is one of `types` or holds one (in arrays and structs)."""
    if isinstance(kind, types):
        return True
    if isinstance(kind, ArrayType):
        return _holds(kind.elementType, types)
    if isinstance(kind, StructType):
        return any(_holds(f.dataType, types) for f in kind.fields)
    return False


def release(frames: list[DataFrame]) -> None:
    for frame in frames:
        frame.unpersist()
