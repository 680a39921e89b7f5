"""`python -m pipeline.serving`: parse flags into ServingSettings and serve until SIGTERM/SIGINT.

Every setting has a flag named after it (`latency_jitter_s` is `--latency-jitter-s`), except
`endpoint_names`, given one `--endpoint-name` at a time. With `--ready-file PATH` the listening
URL is written to PATH once the socket accepts connections (and removed on exit), so shell
scripts can wait for the file instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import signal
import ssl
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.serving.app import make_app
from pipeline.serving.models import MODELS
from pipeline.serving.settings import Overload, ServingSettings, SettingsError

_log = logging.getLogger("pipeline.serving")

# How long in-flight requests get to finish after SIGTERM before connections are dropped.
SHUTDOWN_GRACE_S = 5.0
_DEFAULTS = ServingSettings()


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every default is the ServingSettings field default."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving", description=__doc__)
    add = parser.add_argument
    add("--host", default=_DEFAULTS.host, help="interface to bind (default %(default)s)")
    add(
        "--port",
        type=int,
        default=_DEFAULTS.port,
        metavar="PORT",
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    add("--model", default=_DEFAULTS.model, choices=sorted(MODELS), help="model to serve")
    add(
        "--endpoint-name",
        action="append",
        dest="endpoint_names",
        metavar="NAME",
        help="endpoint name to serve; repeatable (default: the model name)",
    )
    add("--token-env", metavar="VAR", help="require the token held in env var VAR")
    add(
        "--max-tokens-limit",
        type=int,
        default=_DEFAULTS.max_tokens_limit,
        metavar="N",
        help="largest max_tokens accepted, and the budget when absent (default %(default)s)",
    )
    add(
        "--reasoning-item",
        action="store_true",
        help="Responses output starts with a reasoning item",
    )
    add(
        "--reasoning",
        action="store_true",
        help="answer as a reasoning model: reasoning text before every answer, counted as "
        "reasoning tokens",
    )
    add(
        "--required-header",
        action="append",
        dest="required_headers",
        metavar="NAME",
        help="refuse model requests without header NAME (400); repeatable",
    )
    add(
        "--fail-first",
        type=int,
        default=_DEFAULTS.fail_first,
        metavar="N",
        help="fail the first N attempts of every distinct request (default %(default)s)",
    )
    add(
        "--fail-status",
        type=int,
        default=_DEFAULTS.fail_status,
        metavar="STATUS",
        help="HTTP status of injected failures (default %(default)s)",
    )
    add(
        "--retry-after-s",
        type=float,
        default=_DEFAULTS.retry_after_s,
        metavar="SECONDS",
        help="send Retry-After with injected failures (seconds)",
    )
    add(
        "--latency-s",
        type=float,
        default=_DEFAULTS.latency_s,
        metavar="SECONDS",
        help="time every completion takes (default %(default)s)",
    )
    add(
        "--latency-per-token-s",
        type=float,
        default=_DEFAULTS.latency_per_token_s,
        metavar="SECONDS",
        help="extra time per output token (default %(default)s)",
    )
    add(
        "--latency-jitter-s",
        type=float,
        default=_DEFAULTS.latency_jitter_s,
        metavar="SECONDS",
        help="plus a uniform random extra up to this (default %(default)s)",
    )
    add(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        metavar="N",
        help="seed of every random choice: jitter and fault draws (default %(default)s)",
    )
    _add_limit_flags(add)
    _add_fault_rate_flags(add)
    add("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    add("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    add(
        "--keepalive-s",
        type=float,
        metavar="SECONDS",
        help="close a keep-alive connection idle this long (default: aiohttp's, about an hour)",
    )
    add("--access-log", action="store_true", help="log every request to stderr")
    add("--ready-file", type=Path, metavar="PATH", help="write the URL here once listening")
    return parser


def _add_limit_flags(add: Callable[..., Any]) -> None:
    add(
        "--requests-per-minute",
        type=int,
        default=_DEFAULTS.requests_per_minute,
        metavar="N",
        help="requests admitted per endpoint name per window (default: unlimited)",
    )
    add(
        "--tokens-per-minute",
        type=int,
        default=_DEFAULTS.tokens_per_minute,
        metavar="N",
        help="prompt + completion tokens per endpoint name per window (default: unlimited)",
    )
    add(
        "--window-s",
        type=float,
        default=_DEFAULTS.window_s,
        metavar="SECONDS",
        help="length of the sliding rate-limit window (default %(default)s)",
    )
    add(
        "--limit-headers",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.limit_headers,
        help="announce the limits in x-ratelimit-* headers (--no-limit-headers: enforce them "
        "silently, as Databricks does)",
    )
    add(
        "--max-concurrency",
        type=int,
        default=_DEFAULTS.max_concurrency,
        metavar="N",
        help="requests served at once (default: unbounded)",
    )
    add(
        "--overload",
        choices=typing.get_args(Overload),
        default=_DEFAULTS.overload,
        help="beyond --max-concurrency: wait for a slot, or 503 at once (default %(default)s)",
    )


def _add_fault_rate_flags(add: Callable[..., Any]) -> None:
    rates = {
        "error": "get an error status from --error-statuses",
        "timeout": "are held --timeout-hold-s, then answered 504",
        "reset": "have their connection aborted without a response",
        "malformed": "get 200 with a body that is not JSON",
        "truncated": "get 200, closed before Content-Length bytes",
        "empty_choices": "get 200 with no choices",
    }
    for kind, meaning in rates.items():
        add(
            f"--{kind.replace('_', '-')}-rate",
            type=float,
            metavar="FRACTION",
            default=getattr(_DEFAULTS, f"{kind}_rate"),
            help=f"fraction of requests that {meaning} (default %(default)s)",
        )
    add(
        "--error-statuses",
        type=int,
        nargs="+",
        default=list(_DEFAULTS.error_statuses),
        metavar="STATUS",
        help="statuses of random errors (default %(default)s)",
    )
    add(
        "--timeout-hold-s",
        type=float,
        default=_DEFAULTS.timeout_hold_s,
        metavar="SECONDS",
        help="how long a timeout fault holds its request (default %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> ServingSettings:
    """Settings from parsed flags, one per field. Raises SettingsError naming the refused one."""
    values: dict[str, Any] = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(ServingSettings)
    }
    values["endpoint_names"] = args.endpoint_names or []
    values["required_headers"] = args.required_headers or []
    return ServingSettings.from_dict(values)


async def serve(
    settings: ServingSettings,
    app: web.Application,
    on_listening: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully; HTTPS with `tls`.

    `on_listening` gets the URL once the socket accepts connections.
    """
    keepalive: dict[str, Any] = (
        {} if settings.keepalive_s is None else {"keepalive_timeout": settings.keepalive_s}
    )
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        shutdown_timeout=SHUTDOWN_GRACE_S,
        # A client that disconnects cancels its handler: timeout holds, latency sleeps and
        # queued waits end with it instead of running on for nobody.
        handler_cancellation=True,
        **keepalive,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, ssl_context=tls).start()
        url = _listening_url(runner, https=tls is not None)
        _log.info("serving %s at %s", ", ".join(settings.served_names), url)
        on_listening(url)
        await _until_signalled()
    finally:
        await runner.cleanup()


def tls_context(settings: ServingSettings) -> ssl.SSLContext | None:
    """The server's TLS context when `tls_cert` and `tls_key` are set.

    Raises:
        SettingsError: a file is missing or unreadable, or they are not a certificate chain
            and its key in PEM.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    for key, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if not os.access(path, os.R_OK):
            raise SettingsError(key, f"cannot read {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as err:
        raise SettingsError(
            "tls_cert",
            f"{settings.tls_cert} and {settings.tls_key} are not a PEM certificate chain and "
            f"its private key ({err.reason or err})",
        ) from err
    return context


def _listening_url(runner: web.AppRunner, *, https: bool) -> str:
    host, port = runner.addresses[0][:2]  # IPv6 socknames have 4 fields; host and port lead
    if host in ("0.0.0.0", "::"):  # bound to every interface: loopback reaches it
        host = "127.0.0.1"
    scheme = "https" if https else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _write_ready_file(path: Path | None, url: str) -> None:
    if path is None:
        return
    # A watcher must never read a half-written URL: write aside, then rename into place.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(url + "\n")
    os.replace(partial, path)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; exit status 2 on refused settings."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
        app = make_app(settings)
        tls = tls_context(settings)
    except SettingsError as err:
        parser.error(str(err))
    ready = functools.partial(_write_ready_file, args.ready_file)
    try:
        asyncio.run(serve(settings, app, ready, tls))
    finally:
        # A stale ready file would tell the next script a dead server is up.
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
