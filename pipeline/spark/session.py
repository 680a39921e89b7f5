"""The Spark session the job runs in: the active one (Databricks, a notebook), or a new one
with Delta configured; the driver's address for tasks; SQL conf set for a block.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from pyspark import SparkConf
from pyspark.sql import DataFrame, SparkSession

from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)

# Spark Connect's port when the URL gives none; how long to wait for it to accept a connection.
CONNECT_DEFAULT_PORT = 15002
CONNECT_CHECK_TIMEOUT_S = 10.0

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# A speculative copy of a task would send every one of its requests again, and pay for them.
# The job shows its own progress (rows, not stages): Spark's console bar would fight with it.
BASE_CONF = {"spark.speculation": "false", "spark.ui.showConsoleProgress": "false"}
JOB_CONF = {**BASE_CONF, **DELTA_CONF}
# Delta rebuilds a table's state from its log in this many tasks (50 by default, sized for a
# cluster): on a local master, one wave of its slots. A sink's log replay took 1.9 s in 51 tasks
# on two cores, and each run reads the sink, its lease and its run log.
SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"
# Spark's 200 shuffle partitions are sized for a cluster too: on two local slots a rerun's
# planning over a 1,000-row sink spent 10.8 s in one step that took 4.0 s with 2 partitions
# (3.7 s with 4). A local master gets twice its slots, unless the user set it.
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
# Spark keeps the classes it compiled for the last 100 query shapes (whole-stage code,
# projections, orderings), and a run's plans need more: a merge rerun with changed rows
# compiled about 250 at each run in one session, its own among them, where every one
# after the first was compiled before (2026-12-03: 12-row reruns, warm session). A static
# setting: only for a session this package starts, unless its launch (builder, `--conf`)
# sets it.
CODEGEN_CACHE = {"spark.sql.codegen.cache.maxEntries": "1000"}
# Python workers forked with the job's modules already imported (see `pipeline.spark.daemon`):
# static too, and only on a local master, whose executors are this interpreter. On a cluster
# they may lack the package (shipped with `--py-files`, which a worker puts on its path at each
# task): a daemon that cannot import it would not start, and no Python task could run.
PRELOADING_DAEMON = {"spark.python.daemon.module": "pipeline.spark.daemon"}
# Spark's logging on a local master (its tasks run in the driver's JVM): warnings, and a task
# that failed reported once, by the driver, not three times with its stacks before the job's
# one-line reason (see the file). A URI: no space in a path splits the JVM's options.
LOG4J_OPTION = (
    f"-Dlog4j.configurationFile={Path(__file__).with_name('log4j2.properties').as_uri()}"
)
LOCAL_LOGGING = {"spark.driver.extraJavaOptions": LOG4J_OPTION}


def static_defaults(master: str) -> dict[str, str]:
    """The static settings a session this package starts on `master` gets, unless its launch
    sets them."""
    local = local_slots(master) is not None
    return {**CODEGEN_CACHE, **({**PRELOADING_DAEMON, **LOCAL_LOGGING} if local else {})}


def spark_session(
    app_name: str = "batch-chat",
    conf: Mapping[str, str] | None = None,
    *,
    remote: str | None = None,
) -> SparkSession:
    """The active session (Databricks, a notebook), else a new one with Delta configured.

    With `remote` (or `SPARK_REMOTE`), a Spark Connect session: `sc://host:port`, or `local[N]`
    for pyspark's embedded Connect server, started with the settings a local run uses. Under
    `spark-submit` the JVM is already running, so Delta's jars must come from `--packages`;
    launched from plain Python, `configure_spark_with_delta_pip` fetches them.
    """
    remote = remote or os.environ.get("SPARK_REMOTE") or None
    if remote is not None:
        return _connect_session(app_name, remote, conf)
    active = SparkSession.getActiveSession()
    if active is not None:
        _warn_if_speculative(active)
        return active
    # Executors must run the same interpreter (and so see the same packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit launched the JVM
    with_delta = not under_submit or _delta_on_classpath()
    settings = {**(JOB_CONF if with_delta else BASE_CONF), **(conf or {})}
    if not under_submit:
        settings.setdefault("spark.master", os.environ.get("SPARK_MASTER", "local[*]"))
    master = settings.get("spark.master") or (_submitted_master() if under_submit else "")
    for key, value in static_defaults(master).items():
        # (spark-submit started the JVM: its options are what its launch gave it)
        if not (under_submit and (_submitted_with(key) or key in LOCAL_LOGGING)):
            settings.setdefault(key, value)
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not under_submit:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    session = builder.getOrCreate()
    _size_local_session(session, settings)
    _warn_if_speculative(session)
    return session


def _connect_session(app_name: str, remote: str, conf: Mapping[str, str] | None) -> SparkSession:
    if remote.startswith("sc://"):
        _check_listening(remote)
    builder = SparkSession.builder.remote(remote).appName(app_name)
    settings = dict(conf or {})
    ours: list[str] = []  # settings of ours the server starts with
    if remote.startswith("local"):
        # pyspark starts the Connect server in this process: as a local run would, with Delta
        # (its jars fetched through spark.jars.packages) and executors on this interpreter.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        local = {**JOB_CONF, **static_defaults(remote), "spark.jars.packages": DELTA_PACKAGE,
                 EMBEDDED_SERVER: "true"}  # fmt: skip
        _size_for_local(remote, local)
        ours = [key for key in local if key not in settings]
        settings = {**local, **settings}
    for key, value in settings.items():
        builder = builder.config(key, value)
    with warnings.catch_warnings():
        # pyspark gives the server it starts these settings, then sets each again on the new
        # session, where a static one cannot change: a warning for each, about a value the
        # server already runs with. (A user's own setting keeps its warning.)
        for key in ours:
            warnings.filterwarnings(
                "ignore", rf"Failed to set {re.escape(key)} to .*CANNOT_MODIFY_CONFIG", UserWarning
            )
        session = builder.getOrCreate()
    _warn_if_speculative(session)
    return session


def _size_for_local(master: str, settings: dict[str, str]) -> None:
    """`local_sizes` for a session still to start, unless `settings` say."""
    for key, value in local_sizes(master).items():
        settings.setdefault(key, value)


def _size_local_session(session: SparkSession, settings: Mapping[str, str]) -> None:
    """`local_sizes` for a classic session on a local master (from the builder, or started by
    spark-submit), where neither `settings` (given to the builder) nor its Spark conf
    (`--conf`, spark-defaults.conf) set them. `settings` count even when the Spark context was
    already running: the builder then puts them in the session's conf, not the context's."""
    context = session.sparkContext
    configured = context.getConf()
    for key, value in local_sizes(context.master or "").items():
        if key not in settings and not configured.contains(key):
            session.conf.set(key, value)


def local_sizes(master: str) -> dict[str, str]:
    """Partition counts for a local master: Delta's log replay in one wave of its slots, and
    a shuffle over twice its slots; none for any other master."""
    slots = local_slots(master)
    if slots is None:
        return {}
    return {SNAPSHOT_PARTITIONS: str(slots), SHUFFLE_PARTITIONS: str(2 * slots)}


def local_slots(master: str) -> int | None:
    """The task slots of a local master (`local`, `local[4]`, `local[*]`, `local[4,2]`); None
    for any other master."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match is None:
        return None
    threads = match.group(1)
    if threads is None:
        return 1
    if threads == "*":
        return os.cpu_count() or 1
    return max(1, int(threads))


def _check_listening(remote: str) -> None:
    """Fail at once, naming the URL, when nothing listens at a Connect URL's host and port (the
    Connect client would otherwise retry for minutes before saying anything).

    Raises:
        ConfigError: naming `--remote` (or SPARK_REMOTE), the address and why.
    """
    address = urlsplit(remote.split(";", 1)[0])
    host, port = address.hostname or "localhost", address.port or CONNECT_DEFAULT_PORT
    try:
        with socket.create_connection((host, port), timeout=CONNECT_CHECK_TIMEOUT_S):
            return
    except OSError as err:
        raise ConfigError(
            "--remote",
            f"no Spark Connect server answers at {host}:{port} ({err.strerror or err}); "
            "check the URL (sc://host:port) or SPARK_REMOTE",
        ) from None


def is_connect(spark: SparkSession) -> bool:
    """Whether `spark` is a Spark Connect session (no JVM in this process to call)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


# Set on a Spark Connect session whose server pyspark started in this process (`--remote
# local[N]`, see `spark_session`): its executors run on this machine.
EMBEDDED_SERVER = "spark.batchchat.embeddedServer"


def files_here(spark: SparkSession) -> bool:
    """Whether this process sees the files `spark`'s executors read and write, as they do: a
    classic session on a local master, or a Connect server started in this process. (A Connect
    client of any other server may not: only Spark can say what its cluster sees.)"""
    if is_connect(spark):
        return spark.conf.get(EMBEDDED_SERVER, "false") == "true"
    return local_slots(spark.sparkContext.master or "") is not None


def driver_host(spark: SparkSession) -> str:
    """The address executors reach this process at (loopback when they run on this machine).

    Under Spark Connect this process is the client, not Spark's driver: its own address on the
    route to the Connect server, never the server's `spark.driver.host`.
    """
    if is_connect(spark):
        return own_address_towards(_connect_host(spark))
    try:
        master = spark.conf.get("spark.master", "") or ""
        if master.startswith("local"):
            return "127.0.0.1"
        return spark.conf.get("spark.driver.host", "127.0.0.1") or "127.0.0.1"
    except Exception:  # a runtime that hides its confs
        return "127.0.0.1"


def own_address_towards(host: str | None) -> str:
    """This machine's address on the route to `host` (no packet is sent: a UDP socket is only
    connected, which picks the interface); loopback for a local or unknown host."""
    if host is None or host == "localhost" or host.startswith("127.") or host == "::1":
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # discard port; nothing is sent
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def _connect_host(spark: SparkSession) -> str | None:
    # The Connect client keeps the server's host on its channel builder (no public accessor).
    builder = getattr(getattr(spark, "client", None), "_builder", None)
    host = getattr(builder, "host", None)
    return host if isinstance(host, str) else None


def _submitted_with(key: str) -> bool:
    """Whether spark-submit's launch (`--conf`, spark-defaults.conf) sets `key`."""
    return _launch_conf().contains(key)


def _submitted_master() -> str:
    """The master spark-submit's launch names (`--master`, spark-defaults.conf)."""
    return _launch_conf().get("spark.master", "") or ""


def _launch_conf() -> SparkConf:
    """The Spark conf spark-submit's launch gave the JVM it started."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()
    return SparkConf()


def _delta_on_classpath() -> bool:
    # Under spark-submit, Delta is there only when --packages (or --jars) brought it; without
    # it, a Parquet-only job must still start, so the Delta extension is left out.
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkContext

    SparkContext._ensure_initialized()
    jvm = SparkContext._jvm
    assert jvm is not None
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    try:
        jvm.java.lang.Class.forName(DELTA_CONF["spark.sql.extensions"], False, loader)
    except Py4JJavaError:
        return False
    return True


def _warn_if_speculative(spark: SparkSession) -> None:
    try:
        speculative = spark.conf.get("spark.speculation", "false") == "true"
    except Exception:  # some runtimes hide cluster confs; nothing to warn about then
        return
    if speculative:
        log.warning("spark.speculation is on: duplicate task attempts will pay for requests twice")


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """`settings` in the session's SQL conf while the context is open; restored after."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, before in previous.items():
            if before is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, before)


def cached(frame: DataFrame) -> DataFrame:
    """`frame`, kept in memory when the runtime can (a plan reads it once per chunk)."""
    try:
        return frame.persist()
    except Exception as err:  # e.g. serverless compute, which has no cache
        log.warning("cannot cache a planning step (%s); each chunk recomputes it", err)
        return frame
