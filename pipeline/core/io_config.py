"""The `source` and `sink` sections: where the job reads its prompts and writes its answers.

Kept with them: one spelling for a path or a table name (`normal_path`, `absolute`), so that the
sink is never the source however either is written, and the prompt template's placeholders,
which name source columns. Like every section, each is a frozen dataclass that checks itself on
construction and names the offending key (`sink.chunk_rows`).
"""

from __future__ import annotations

import os
import posixpath
import re
import string
from dataclasses import dataclass
from typing import Literal

from pipeline.core.checks import at_least, exactly_one
from pipeline.core.errors import ConfigError

TableFormat = Literal["parquet", "delta"]
WriteMode = Literal["merge", "overwrite", "append", "error"]
# What a merge run does with a row whose request changed since its answer was written.
OnChange = Literal["resend", "keep"]
# A path that starts with a scheme (s3://, abfss://, dbfs:/, file:) is a URI, not a local path.
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# A lease is renewed every third of its time to live; shorter than this, a busy driver could
# miss a renewal.
MIN_LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class SourceConfig:
    path: str | None = None
    table: str | None = None
    format: TableFormat = "parquet"
    id_column: str | None = None
    prompt_column: str | None = None
    messages_column: str | None = None
    template: str | None = None
    system_prompt: str | None = None
    max_tokens_column: str | None = None
    temperature_column: str | None = None
    # Rows whose prompt text is longer than this are answered with an error, never sent.
    max_prompt_chars: int = 100_000
    # Images shown with each row's user message (see `pipeline.core.images`): a column of
    # image URLs, image bytes, or arrays of either.
    image_column: str | None = None
    # A row whose images are larger than this as sent (base64 in a data: URL) is an error row,
    # never sent: Databricks Model Serving refuses a request over 4 MiB.
    max_image_bytes: int = 4 * 1024 * 1024
    # Spark tasks per chunk (None: the cluster's slots; half of them for each of several Delta
    # chunks run side by side, see `pipeline.spark.layout`).
    partitions: int | None = None

    def __post_init__(self) -> None:
        exactly_one("source", self, ("path", "table"))
        exactly_one("source", self, ("prompt_column", "messages_column", "template"))
        at_least("source.max_prompt_chars", self.max_prompt_chars, 1)
        at_least("source.max_image_bytes", self.max_image_bytes, 1)
        if self.partitions is not None:
            at_least("source.partitions", self.partitions, 1)
        if self.template is not None:
            template_fields(self.template)  # raises ConfigError on a bad placeholder

    def input_columns(self) -> list[str]:
        """Columns the requests are built from (the id column included)."""
        named = [
            self.id_column,
            self.prompt_column,
            self.messages_column,
            self.max_tokens_column,
            self.temperature_column,
            self.image_column,
        ]
        columns = [c for c in named if c]
        if self.template is not None:
            columns += [c for c in template_fields(self.template) if c not in columns]
        return columns


@dataclass(frozen=True)
class SinkConfig:
    path: str | None = None
    table: str | None = None
    format: TableFormat = "delta"
    # merge: rows whose request_id already has a row in the sink are not sent again (resume,
    # incremental runs); overwrite | append | error: Spark's save modes.
    mode: WriteMode = "merge"
    # Rows answered and committed together; a crash loses at most the chunk in flight.
    chunk_rows: int = 1_000_000
    # merge: send rows again whose earlier row is an error, replacing that row. Only Delta
    # can replace a row, so the default (null) is true for Delta and false for Parquet.
    retry_errors: bool | None = None
    # merge: a row whose request changed since its answer (prompt, template, parameters,
    # response format, API, endpoint name) is sent again and its old row replaced (resend), or
    # its old answer is kept (keep). A Parquet sink cannot replace rows: resend stops the run
    # before sending when any row changed.
    on_change: OnChange = "resend"
    # merge: an input of at least this many rows first finds, in the JVM, the rows the sink
    # already answers under this config by their values, and builds requests for the rest
    # alone; a smaller one builds every row's request, which is quicker there (the crossing
    # was about 30,000 rows on two cores). 0: always.
    recognise_from_rows: int = 50_000
    # One run at a time per sink: a run holds a lease next to the sink, renewed while it runs;
    # the lease of a run that died without releasing it expires after this long.
    lease_ttl_s: float = 600.0
    # Where tasks keep the answers they paid for until their chunk commits, so a lost executor
    # or driver does not pay for them again: a folder every executor reaches (a path Spark
    # names, or a mount like /dbfs or /Volumes). null: `<sink.path>_inflight`; a table sink
    # has none unless set. "off": not kept.
    inflight_path: str | None = None
    # How often a task writes the answers it got since the last write (or every 1,000 answers).
    inflight_flush_s: float = 1.0

    def __post_init__(self) -> None:
        exactly_one("sink", self, ("path", "table"))
        at_least("sink.chunk_rows", self.chunk_rows, 1)
        at_least("sink.recognise_from_rows", self.recognise_from_rows, 0)
        if not self.inflight_flush_s > 0:
            raise ConfigError(
                "sink.inflight_flush_s", f"must be > 0 seconds, got {self.inflight_flush_s:g}"
            )
        folder = self.inflight_folder
        if folder is not None and self.path is not None:
            inner, outer = sorted((normal_path(self.path), normal_path(folder)), key=len)
            if outer == inner or outer.startswith(inner.rstrip("/") + "/"):
                raise ConfigError(
                    "sink.inflight_path",
                    f"overlaps the sink ({folder!r}, sink {self.path!r}): it must be a folder "
                    "of its own, e.g. the default <sink path>_inflight",
                )
        if self.lease_ttl_s < MIN_LEASE_TTL_S:
            raise ConfigError(
                "sink.lease_ttl_s", f"must be >= {MIN_LEASE_TTL_S:g}, got {self.lease_ttl_s:g}"
            )
        if self.mode == "merge" and self.retry_errors and self.format == "parquet":
            raise ConfigError(
                "sink.retry_errors",
                "Parquet files cannot replace an earlier error row; use sink.format=delta, "
                "or set sink.retry_errors=false to keep error rows as they are",
            )

    @property
    def inflight_folder(self) -> str | None:
        """The folder of in-flight answers, or None when they are not kept."""
        if self.inflight_path == "off":
            return None
        if self.inflight_path is not None:
            return self.inflight_path
        return None if self.path is None else self.path.rstrip("/") + "_inflight"

    @property
    def retries_errors(self) -> bool:
        """Whether a merge run sends the rows whose earlier row is an error."""
        return self.format == "delta" if self.retry_errors is None else self.retry_errors


def check_sink_apart(source: SourceConfig, sink: SinkConfig) -> None:
    """Refuse a sink that is the source, or inside it, or around it, whatever the mode or format.

    Writing there would destroy the input or read the output back as input. Tables are compared
    again by Spark (`pipeline.spark.tables.check_sink_is_not_source`), which knows the current
    catalog and the tables' locations.

    Raises:
        ConfigError: naming `sink.table` or `sink.path`.
    """
    if source.table is not None and sink.table is not None:
        if _table_key(source.table) == _table_key(sink.table):
            raise ConfigError("sink.table", f"is the source table {source.table!r}")
    if source.path is not None and sink.path is not None:
        inner, outer = sorted((normal_path(source.path), normal_path(sink.path)), key=len)
        if outer == inner or outer.startswith(inner.rstrip("/") + "/"):
            what = "is" if outer == inner else "overlaps"
            raise ConfigError(
                "sink.path", f"{what} the source path ({sink.path!r}, source {source.path!r})"
            )


def normal_path(path: str) -> str:
    """`path` in one spelling: a local path absolute (`file:` dropped), a URI without a trailing
    slash."""
    if _URI_SCHEME.match(path) and not path.startswith("file:"):
        scheme, _, rest = path.partition(":")
        return f"{scheme.lower()}:{posixpath.normpath(rest)}"
    local = path.removeprefix("file://").removeprefix("file:")
    return os.path.abspath(local)


def absolute(path: str | None) -> str | None:
    """A relative path made absolute against the working directory; others as they are.

    Spark reads a relative path against the working directory (on a local file system), but
    Delta's SQL (`delta.`path``, used for the lease, deletes and history) only knows absolute
    ones: one spelling serves both. On a cluster, give a full URI (s3://, abfss://, dbfs:/).
    """
    if path is None or _URI_SCHEME.match(path) or path.startswith("/"):
        return path
    return os.path.abspath(path)


def _table_key(name: str) -> str:
    return name.replace("`", "").lower()


def template_fields(template: str) -> list[str]:
    """Column names a template's `{column}` placeholders name, in order of first use.

    Raises:
        ConfigError: (key `source.template`) a placeholder is not a plain column name.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError("source.template", f"is not a valid template: {err}") from err
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or any(ch in name for ch in ".[]") or spec or conversion:
            raise ConfigError(
                "source.template",
                f"placeholder {{{name}}} must be a plain column name like {{topic}}",
            )
        if name not in names:
            names.append(name)
    return names
