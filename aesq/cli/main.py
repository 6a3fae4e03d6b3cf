"""The `aesq` command: run the spine, manage the database, and read results."""

from __future__ import annotations

import atexit
import contextvars
import logging
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from aesq.cli.output import FittedTable, Typer, notice, output_console, plural, print_problem, scientific
from aesq.core.config import ConfigurationError, Settings, get_settings

if TYPE_CHECKING:
    from datetime import datetime

    from prefect.client.schemas.objects import FlowRun

    from aesq.core.model_check import Check

app = Typer(help="aesq: aesthetic data quality for generated and crawled images.", no_args_is_help=True)
db_app = Typer(help="Manage the database (schema migrations, embedded server).", no_args_is_help=True)
app.add_typer(db_app, name="db")
bench_app = Typer(help="Benchmark scorers against human labels.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
models_app = Typer(help="Check a model's checkpoint on the machine that holds it.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = output_console()


def _print_version(asked: bool) -> None:
    """`aesq --version`: the installed package's version, then exit."""
    if asked:
        from importlib.metadata import version

        console.print(f"aesq {version('aesq')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Show aesq's version and exit.")
    ] = False,
) -> None:
    """aesq: aesthetic data quality for generated and crawled images."""


class CliError(Exception):
    """An error the user can act on; printed as one line."""


class Stopped(BaseException):
    """SIGINT or SIGTERM asked aesq to stop; not an Exception, so nothing on the way up swallows it."""

    def __init__(self, signum: int, outcome: str = "") -> None:
        super().__init__(signum, outcome)
        self.signum, self.outcome = signum, outcome

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}" + (f"; {self.outcome}" if self.outcome else "")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_on_signal(signum: int, _frame: object) -> None:
    """Raise `Stopped` in the main thread; further signals are ignored while aesq stops."""
    for handled in STOP_SIGNALS:
        signal.signal(handled, signal.SIG_IGN)
    raise Stopped(signum)


def _exit_by_signal(signum: int) -> None:
    """End the process at once by the signal itself, so the shell sees it (status 130 / 143).

    A normal exit would wait for the flow's task threads, which may be mid-batch or sleeping before a
    retry. atexit handlers do not run, so one of their jobs is done here: multiprocessing's named semaphores
    (image validation workers) are unlinked, which its resource tracker would otherwise report on stderr.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    # What multiprocessing's own atexit hook runs first (a private function, so not in the type stubs).
    multiprocessing.util._run_finalizers(0)  # type: ignore[attr-defined]
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _ready_settings() -> Settings:
    """Valid settings with a database at the current schema: the embedded one is started and migrated
    automatically, saying so first; a schema already current costs one query (no Alembic)."""
    from aesq.cli.revisions import head_revision, stored_revision
    from aesq.core import database
    from aesq.core.model_names import check_model_names

    settings = get_settings()
    check_model_names(settings)
    embedded = settings.database_url is None
    if embedded and not (database.embedded_data_dir(settings) / "postmaster.pid").exists():
        notice(f"starting the embedded Postgres in {database.embedded_data_dir(settings)}…")
    head = head_revision()
    if head is not None and stored_revision(settings) == head:
        return settings
    if embedded:
        notice(f"migrating the database to {head or 'the newest revision'}…")
        database.upgrade(settings=settings)
        return settings
    from alembic.script import ScriptDirectory

    if database.current_revision(settings) != ScriptDirectory(str(database.MIGRATIONS_DIR)).get_current_head():
        raise CliError("the database schema is not current: run `aesq db upgrade`")
    return settings


# The loggers whose level Prefect's logging.yml takes from PREFECT_LOGGING_LEVEL.
PREFECT_LEVEL_LOGGERS = ("prefect", "prefect.extra", "prefect.client", "prefect.infrastructure")


@contextmanager
def _quiet_prefect(verbose: bool) -> Iterator[None]:
    """Prefect settings for the duration, where the environment or profile does not set them: no telemetry, and,
    unless asked for, no per-task log lines in the progress display; the API is aesq's local server where none is
    configured."""
    from prefect.settings import PREFECT_LOGGING_LEVEL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    defaults = {PREFECT_SERVER_ANALYTICS_ENABLED: False, **({} if verbose else {PREFECT_LOGGING_LEVEL: "WARNING"})}
    with temporary_settings(set_defaults=defaults), _prefect_api():
        # Prefect set these loggers' levels from PREFECT_LOGGING_LEVEL when imported (its logging.yml): again, with
        # this setting. Only the levels, and back afterwards: re-running Prefect's setup_logging costs 0.2 s each time.
        loggers = [logging.getLogger(name) for name in PREFECT_LEVEL_LOGGERS]
        before = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(PREFECT_LOGGING_LEVEL.value())
        try:
            yield
        finally:
            for logger, level in zip(loggers, before):
                logger.setLevel(level)


@contextmanager
def _prefect_api() -> Iterator[None]:
    """The Prefect API for the duration: PREFECT_API_URL where the environment or profile sets it, else aesq's
    local server in the data folder, started on first use (saying so) and announced with its UI address."""
    from aesq.cli.local_prefect import prefect_api

    with prefect_api(get_settings().data_dir, console.print, notice):
        yield


@contextmanager
def _run_logs_off_terminal(verbose: bool) -> Iterator[None]:
    """Unless asked for, send flow and task run logs (retries, tracebacks) only to the Prefect API: on the
    terminal a failure is aesq's one line, and the progress bar is not broken up."""
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    before = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.propagate = verbose
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, before):
            logger.propagate = propagate


# What aesq's long-running entry points ask of the Prefect client, unless PREFECT_CLIENT_MAX_RETRIES or
# PREFECT_CLIENT_RETRY_EXTRA_CODES (environment or profile) says otherwise. Prefect retries 408, 429, 502 and 503,
# and read/connect/pool timeouts, itself; 500 and 504 only when told. Between tries it waits 2, 4, 8, ... s
# (PREFECT_CLIENT_RETRY_JITTER_FACTOR of jitter, or the server's Retry-After): seven retries ride out about four
# minutes of a busy or restarting API before a call fails, and a failed call of the flow run's state ends the run.
CLIENT_MAX_RETRIES = 7
CLIENT_RETRY_CODES = frozenset({500, 502, 503, 504})


@contextmanager
def _prefect_client_retries() -> Iterator[None]:
    """Prefect settings for the duration: its client retries server errors (CLIENT_RETRY_CODES) with back-off.

    They are settings in this thread's context, so threads started inside must copy it (contextvars); the flow
    runs `aesq worker` starts in subprocesses get them as environment variables from Prefect.
    """
    from prefect.settings import (
        PREFECT_CLIENT_MAX_RETRIES,
        PREFECT_CLIENT_RETRY_EXTRA_CODES,
        temporary_settings,
    )

    defaults = {
        PREFECT_CLIENT_MAX_RETRIES: CLIENT_MAX_RETRIES,
        PREFECT_CLIENT_RETRY_EXTRA_CODES: set(CLIENT_RETRY_CODES),
    }
    with temporary_settings(set_defaults=defaults):
        yield


def _cancel_flow_run(flow_run: FlowRun, stopped: Stopped) -> str:
    """Mark a stopped run Cancelled, so the Prefect API does not show it running forever; says how that went."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.is_final():  # it ended just as the signal came
                return f"flow run {flow_run.name!r} had already ended"
            client.set_flow_run_state(flow_run.id, Cancelled(message=f"aesq {stopped}"), force=True)
    except Exception as error:
        return f"flow run {flow_run.name!r} could not be marked Cancelled ({_one_line(error)})"
    return f"flow run {flow_run.name!r} marked Cancelled; run it again to finish"


def _run_with_progress(
    settings: Settings,
    source: str,
    verbose: bool,
    scorers: list[str] | None = None,
    namespace: Literal["production", "labels"] = "production",
    listing: bool = True,
) -> None:
    """Run the spine flow on `source` (with `scorers` instead of the configured ones, when given; in the
    `namespace`'s database, whose `settings` these are; without listing it, ingesting only what is queued under
    it, when `listing` is off) in a worker thread; the main thread shows a bar of the source's finished assets
    and stays free to stop at once on SIGINT/SIGTERM, marking the flow run Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow as run_flow_engine
    from prefect.states import Pending
    from sqlalchemy.exc import SQLAlchemyError

    from aesq.core.pipeline_status import source_progress
    from aesq.core.storage import open_source
    from aesq.flows.spine import run_flow

    opened = open_source(source, settings)
    parameters: dict[str, Any] = {"source": opened.uri, "scorers": scorers, "namespace": namespace, "listing": listing}
    with get_client(sync_client=True) as client:  # created here, so its id is known however early a signal comes
        flow_run = client.create_flow_run(
            run_flow, parameters=run_flow.serialize_parameters(parameters), state=Pending()
        )
    outcome: dict[str, BaseException | None] = {"error": None}

    def work() -> None:
        try:
            run_flow_engine(run_flow, flow_run=flow_run, parameters=parameters)
        except BaseException as error:  # reported by the main thread
            outcome["error"] = error

    def show_progress() -> None:
        """Move the bar; display only, so a database error skips one update (the flow's tasks retry their own)."""
        try:
            done, total = source_progress(settings, opened.storage, opened.bucket, opened.prefix)
        except SQLAlchemyError:
            return
        if total:
            progress.update(
                bar, description=f"scoring {opened.uri}", completed=done, total=total, count=f"{done}/{total}"
            )

    # In this thread's context, so the flow run sees the Prefect settings of the entry point.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="aesq-run")
    columns = (
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        TextColumn("{task.fields[count]}", markup=False),
        TimeElapsedColumn(),
    )
    try:
        with _run_logs_off_terminal(verbose), Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(f"{'listing' if listing else 'queued under'} {opened.uri}…", total=None, count="")
            worker.start()
            while worker.is_alive():
                worker.join(0.5)
                show_progress()
    except Stopped as stopped:
        _give_back_claims(settings)
        raise Stopped(stopped.signum, _cancel_flow_run(flow_run, stopped)) from None
    if outcome["error"] is not None:
        _give_back_claims(settings)
        raise outcome["error"]


def _give_back_claims(settings: Settings) -> None:
    """A run that stops or fails gives its claimed batches back at once, so the next run need not wait for
    their leases (a run killed outright cannot: its batches wait `AESQ_LEASE_SECONDS`)."""
    from sqlalchemy.exc import SQLAlchemyError

    from aesq.core import database
    from aesq.core.claims import release_worker

    try:
        with database.get_engine(settings).begin() as connection:
            release_worker(connection)
    except SQLAlchemyError:  # the database is the problem: the leases lapse by themselves
        pass


def _print_table(table: FittedTable) -> None:
    """A table as wide as the terminal allows (see FittedTable.render)."""
    console.print(table.render(console))


def _comparison_table(settings: Settings, scorer: str | None, source: str | None = None) -> FittedTable:
    """The version comparison (of the versions with images in `source`, when given); an error naming the scorers
    with figures when `scorer` has none."""
    from aesq.analysis.versions import version_statistics
    from aesq.core.pipeline_status import source_versions

    headers = ("generator:version", "kind", "scorer", "n", "mean", "95% interval", "std", "median", "p10", "p90")
    table = FittedTable(
        (*headers, "threshold", "≥ threshold"),
        "Generator versions (best mean first per scorer)"
        if source is None
        else f"Generator versions with images in {source} (figures over all their images; best mean first)",
        frozenset(range(3, 12)),
        shared=frozenset({2, 10}),  # scorer, threshold
    )
    rows = version_statistics(settings, scorer)
    if source is not None:
        present = source_versions(settings, source)
        rows = [row for row in rows if f"{row['generator']}:{row['version']}" in present]
    if scorer is not None and not rows:
        scored = sorted({row["scorer"] for row in version_statistics(settings, None)})
        raise CliError(f"no figures for scorer {scorer!r}; scorers with figures: {', '.join(scored) or 'none yet'}")
    for row in rows:
        share = "—" if row["share_above"] is None else f"{row['share_above']:.0%}"
        interval = "—" if row["mean_low"] is None else f"[{row['mean_low']:.2f}, {row['mean_high']:.2f}]"
        table.add_row(
            f"{row['generator']}:{row['version']}",
            row["kind"],
            row["scorer"],
            str(row["count"]),
            f"{row['mean']:.2f}",
            interval,
            _number(row["std"], 2),
            f"{row['median']:.2f}",
            f"{row['p10']:.2f}",
            f"{row['p90']:.2f}",
            "—" if row["threshold"] is None else f"{row['threshold']:g}",
            share,
        )
    return table


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix or a local folder")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
) -> None:
    """Ingest, score and aggregate SOURCE once, through the Prefect flows."""
    from aesq.core.pipeline_status import source_progress
    from aesq.core.scoring import check_device
    from aesq.core.storage import check_source
    from aesq.tasks.result_storage import check_result_storage

    check_device(get_settings())  # configuration and an unreachable source are said before any start-up
    checked = check_source(source, get_settings())
    if get_settings().pools:
        check_result_storage(get_settings())
    settings = _ready_settings()
    _run_and_summarise(settings, checked.uri, verbose)
    if not source_progress(settings, checked.storage, checked.bucket, checked.prefix)[1]:
        console.print(f"no images found in {checked.uri}", highlight=False, soft_wrap=True)
    elif (table := _comparison_table(settings, None, checked.uri)).rows:
        _print_table(table)


def _run_and_summarise(settings: Settings, source: str, verbose: bool, listing: bool = True) -> None:
    """Run the spine on `source` (only on what is queued under it, with `listing` off), then the database's
    counts and what this run did, with its failures only."""
    from aesq.core.pipeline_status import database_now

    started = database_now(settings)
    with _quiet_prefect(verbose), _prefect_client_retries():
        _run_with_progress(settings, source, verbose, listing=listing)
    _print_status(settings, failures=False)
    _print_run_summary(settings, source, started)


def _print_run_summary(settings: Settings, source: str, started: datetime) -> None:
    """What happened to `source`'s assets since `started` (by this run, or workers beside it), and the
    failures among them grouped by reason, with a few examples each."""
    from aesq.core.pipeline_status import failure_reasons, run_summary

    summary = run_summary(settings, source, started)
    console.print(
        f"this run: {summary.new} new, {summary.scored} scored, {summary.failed} failed, "
        f"{plural(summary.duplicates, 'duplicate')} (bytes already held by another asset), {summary.deleted} deleted"
        + (f", {summary.waiting} still waiting for scores" if summary.waiting else ""),
        soft_wrap=True,
        highlight=False,
    )
    for group in failure_reasons(settings, source, since=started):
        console.print(f"failed ({group.reason}): {group.count}", soft_wrap=True, highlight=False)
        for example in group.examples:
            console.print(f"  {example.location}: {example.error}", soft_wrap=True, highlight=False)
        if group.count > len(group.examples):
            console.print(f"  … and {group.count - len(group.examples)} more", highlight=False)
    if summary.failed:
        console.print(f"once fixed: aesq retry --source {source}", soft_wrap=True, highlight=False)


def _print_status(settings: Settings, failures: bool = True) -> None:
    """Counts by status, work in progress, and (unless `failures` is off) the latest failures."""
    from aesq.core.pipeline_status import recent_failures, status_counts, work_in_progress

    counts = status_counts(settings)
    console.print("assets: " + (", ".join(f"{status} {count}" for status, count in sorted(counts.items())) or "none"))
    work = work_in_progress(settings)
    if work.queued or work.scoring_claimed:
        console.print(
            f"in progress: {plural(work.queued, 'object')} queued for ingest ({work.queued_claimed} claimed), "
            f"{plural(work.scoring_claimed, 'asset')} claimed for scoring; workers: {', '.join(work.workers) or 'none'}",
            soft_wrap=True,
            highlight=False,
        )
    for failure in recent_failures(settings) if failures else []:
        console.print(f"failed: {failure.location}: {failure.error}", soft_wrap=True, highlight=False)


@app.command()
def status() -> None:
    """Counts of assets by status, and failures with their reasons."""
    _print_status(_ready_settings())


@app.command()
def retry(
    source: Annotated[str | None, typer.Option(help="only the failed assets of this source")] = None,
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="only queue them: `aesq worker` ingests them on its next run")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
) -> None:
    """Examine failed assets again (all, or those of --source): each goes back through ingest, keeping its old
    reason until the new outcome replaces it; then what is queued where they lie is ingested, without listing
    anything, and scored."""
    from aesq.core.retry import retry_failed
    from aesq.core.scoring import check_device
    from aesq.core.storage import check_source

    settings = _ready_settings()
    if not queue_only:
        check_device(settings)
    retried = retry_failed(settings, source)
    waiting = retried.failed - retried.queued
    console.print(
        f"{plural(retried.queued, 'failed asset')} queued for ingest again"
        + (f" ({waiting} {'was' if waiting == 1 else 'were'} waiting in the queue already)" if waiting else ""),
        highlight=False,
    )
    if queue_only:
        if retried.unconfigured:
            Console(stderr=True, soft_wrap=True).print(
                f"[yellow]aesq: warning:[/yellow] {retried.unconfigured} of them lie under no configured source"
                " (AESQ_SOURCES), and `aesq worker` ingests only those: run `aesq retry` without --queue-only",
                highlight=False,
            )
        return
    for uri in retried.sources:
        _run_and_summarise(settings, check_source(uri, settings).uri, verbose, listing=False)


@app.command()
def compare(
    versions: Annotated[list[str] | None, typer.Argument(help="NAME:VERSION ...; the first is the baseline")] = None,
    scorer: Annotated[str | None, typer.Option(help="only this scorer (default for A B: the first enabled)")] = None,
    correction: Annotated[
        Literal["holm", "bh"], typer.Option(help="for 3+ versions: Holm-Bonferroni or Benjamini-Hochberg")
    ] = "holm",
) -> None:
    """Table of generator versions side by side; with versions A B [C ...], the statistics of B (C, ...) against A."""
    settings = _ready_settings()
    if not versions:
        _print_table(_comparison_table(settings, scorer))
        return
    from aesq.analysis.versions import compare_versions, version_statistics
    from aesq.core.assets import NotFound

    if len(versions) == 1:
        raise typer.BadParameter("name at least two versions, the baseline first: NAME:A NAME:B", param_hint="VERSIONS")
    scorer = scorer or settings.enabled_scorers[0]
    known = {f"{row['generator']}:{row['version']}" for row in version_statistics(settings, scorer)}
    if unknown := [version for version in versions if ":" in version and version not in known]:
        raise CliError(
            f"no {scorer} scores for version {unknown[0]!r}; versions with {scorer} scores: "
            + (", ".join(sorted(known)) or "none yet")
        )
    try:
        comparison = compare_versions(settings, versions, scorer, correction)
    except (ValueError, NotFound) as error:
        raise CliError(str(error)) from None
    baseline = versions[0]
    headers = ("version", "n", "mean diff", "95% interval", "Mann-Whitney p", "effect", "pairs", "paired diff")
    table = FittedTable(
        (*headers, "Wilcoxon p", "adjusted Wilcoxon p", "B better"),
        f"{scorer}: each version against {baseline} (p adjusted: {correction})",
        frozenset(range(1, 11)),
    )
    for version, result in comparison.results.items():
        interval = result.difference_interval
        paired = result.paired
        adjusted = scientific(result.adjusted_p)
        if paired is None and result.adjusted_p is not None:  # no pairs: Mann-Whitney's p was adjusted instead
            adjusted += " (M-W)"
            table.notes = ["(M-W): without pairs, the Mann-Whitney p is adjusted"]
        table.add_row(
            version,
            str(result.count_b),
            f"{result.mean_difference:+.3f}",
            f"[{interval.low:+.3f}, {interval.high:+.3f}]" if interval else "—",
            scientific(result.mann_whitney_p),
            _number(result.effect_size),
            str(paired.pairs) if paired else str(comparison.pair_counts[version]),
            f"{paired.mean_difference:+.3f}" if paired else "—",
            scientific(paired.wilcoxon_p) if paired else "—",
            adjusted,
            f"{paired.share_b_better:.0%}" if paired else "—",
        )
    _print_table(table)
    for version, result in comparison.results.items():
        if result.too_few:
            console.print(f"{version}: {result.too_few}", soft_wrap=True, highlight=False)


@app.command()
def top(
    generator: Annotated[str, typer.Option("--generator", "-g", help="NAME or NAME:VERSION")],
    n: Annotated[int, typer.Option("-n", min=1, help="how many")] = 10,
    scorer: Annotated[str | None, typer.Option(help="scorer to rank by (default: the first enabled)")] = None,
) -> None:
    """A generator's best-scored assets."""
    from aesq.core.assets import top_assets

    settings = _ready_settings()
    name, _, version = generator.partition(":")
    rows = top_assets(settings, name, version or None, scorer or settings.enabled_scorers[0], n)
    if not rows:
        raise CliError(f"no scored assets for generator {generator!r}")
    table = FittedTable(
        ("object", "id", "version", "score", "prompt"),
        f"Top {n} of {generator}",
        frozenset({1, 3}),
        whole_names=False,
        wrap=frozenset({4}),
        shared=frozenset({2}),  # version
    )
    for row in rows:
        table.add_row(
            f"{row['bucket']}/{row['key']}", str(row["id"]), row["version"], f"{row['value']:.2f}", row["prompt"] or ""
        )
    _print_table(table)


@app.command()
def similar(
    asset_id: Annotated[int, typer.Argument(help="asset id")],
    n: Annotated[int, typer.Option("-n", min=1)] = 5,
    embedder: Annotated[str | None, typer.Option(help="default: the first enabled")] = None,
) -> None:
    """Nearest neighbours of an asset by embedding (pgvector HNSW)."""
    from aesq.core.assets import NotFound, asset_detail, neighbours

    settings = _ready_settings()
    embedder = embedder or next(iter(settings.enabled_embedders), None)
    try:
        nearest = neighbours(settings, asset_id, embedder, n)
    except NotFound:
        raise CliError(f"no such asset {asset_id}") from None
    except ValueError as error:
        raise CliError(str(error)) from None
    if not nearest:
        asset = asset_detail(settings, asset_id)
        if asset["status"] == "failed":
            raise CliError(f"asset {asset_id} failed, so it has no embedding: {asset['error']}")
        if asset["status"] != "scored":
            raise CliError(f"asset {asset_id} is {asset['status']}, so it has no embedding")
        raise CliError(f"asset {asset_id} has no {embedder or 'indexed'} embedding")
    table = FittedTable(
        ("key", "id", "generator", "version", "distance"),
        f"Nearest to asset {asset_id}",
        frozenset({1, 4}),
        whole_names=False,
        shared=frozenset({2}),  # generator
    )
    for neighbour in nearest:
        table.add_row(
            neighbour["key"] or "—",
            str(neighbour["id"]),
            neighbour["generator"] or "— (crawled)",
            neighbour["version"] or "—",
            f"{neighbour['distance']:.4f}",
        )
    _print_table(table)


@app.command()
def demo(
    folder: Annotated[Path | None, typer.Option(help="where to build the sample (default: DATA_DIR/demo)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build a sample of real photographs as three generator versions, run the spine, compare them."""
    from aesq.cli.demo import build_sample
    from aesq.core.scoring import check_device
    from aesq.flows.followup import defects_flow, report_flow

    settings = _ready_settings()
    check_device(settings)
    folder = folder or settings.data_dir / "demo"
    count = build_sample(folder)
    console.print(f"built {count} demo images in {folder}")
    with _quiet_prefect(verbose):
        _run_with_progress(settings, str(folder), verbose)
        _print_status(settings)
        _print_table(_comparison_table(settings, None))
        with _run_logs_off_terminal(verbose):
            console.print(f"defect analysis: {defects_flow()} defects recorded on low scorers")
        with _run_logs_off_terminal(verbose):
            console.print(f"report: {report_flow()}")


@app.command()
def defects(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False) -> None:
    """Analyse the low scorers (AESQ_DEFECT_RULES) not analysed since they were scored."""
    from aesq.flows.followup import defects_flow

    _ready_settings()
    with _quiet_prefect(verbose), _run_logs_off_terminal(verbose):
        console.print(f"{defects_flow()} defects recorded")


@app.command()
def report(
    out: Annotated[Path | None, typer.Option(help="also write the HTML here")] = None,
    days: Annotated[int | None, typer.Option(min=1, help="trend window in days (default AESQ_REPORT_DAYS)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Render the quality report, save it to AESQ_REPORTS_URI (or DATA_DIR/reports) and record it."""
    from aesq.core.storage import load_file
    from aesq.flows.followup import report_flow

    settings = _ready_settings()
    with _quiet_prefect(verbose), _run_logs_off_terminal(verbose):
        location = report_flow(days)
    if out is not None:
        out.write_bytes(load_file(location, settings))
    console.print(f"report saved to {location}" + (f" and {out}" if out else ""))


@app.command()
def export(
    scorer: Annotated[str, typer.Option(help="the scorer whose latest score decides")],
    out: Annotated[Path, typer.Option(help="manifest file to write")],
    min_score: Annotated[float | None, typer.Option(help="drop assets scored under this")] = None,
    exclude_defects: Annotated[str, typer.Option(help="comma-separated defect categories that drop an asset")] = "",
    min_severity: Annotated[float, typer.Option(min=0, max=1, help="severity from which a defect drops")] = 0.0,
    format: Annotated[Literal["jsonl", "csv", "parquet"], typer.Option(help="manifest format")] = "jsonl",
) -> None:
    """Write a keep/drop manifest of every asset (bucket, key, sha256, scores, defects) for training."""
    from aesq.analysis.export import export_manifest

    settings = _ready_settings()
    categories = [part.strip() for part in exclude_defects.split(",") if part.strip()]
    try:
        summary = export_manifest(settings, out, scorer, min_score, categories, format, min_severity)
    except ValueError as error:
        raise CliError(str(error)) from None
    console.print(f"kept {summary.kept}, dropped {summary.dropped} → {summary.path}")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 8000,
) -> None:
    """The dashboard and the read-only JSON API (/api/…, described at /openapi.json)."""
    settings = _ready_settings()
    if host not in LOOPBACK and not settings.api_token:
        raise CliError("listening beyond loopback needs AESQ_API_TOKEN (clients send it as Authorization: Bearer)")
    import uvicorn

    from aesq.web import security
    from aesq.web.app import create_app
    from aesq.web.thumbnails import folders_outside_storage

    application = create_app()
    security.listen_on(application, host)
    console.print(f"dashboard on http://{security.host_name(host)}:{port}/")
    if not application.state.listen_host and not settings.allowed_hosts:
        console.print(
            f"listening on every address of this host: browsers reach it by a name only once AESQ_ALLOWED_HOSTS "
            f"lists it (now only {', '.join(sorted(security.LOOPBACK_HOSTS))})",
            soft_wrap=True,
            highlight=False,
        )
    if outside := folders_outside_storage(settings):
        console.print(
            f"thumbnails not shown for images in {', '.join(outside)}: not in AESQ_SOURCES — add to see them",
            soft_wrap=True,
            highlight=False,
        )
    uvicorn.run(  # a TLS-terminating proxy in AESQ_FORWARDED_ALLOW_IPS makes requests count as HTTPS
        application,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=bool(settings.forwarded_allow_ips),  # none listed: every X-Forwarded-* is ignored
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@app.command()
def bridge(
    listen: Annotated[str, typer.Option(help="host:port to take bucket notifications on")] = "127.0.0.1:8787",
) -> None:
    """Queue the objects of bucket notifications POSTed here (MinIO webhook target) for the s3:// sources, and
    start one ingest per burst (AESQ_NOTIFICATION_WINDOW_SECONDS) with a Prefect event. Needs a Prefect API that
    answers: PREFECT_API_URL, or aesq's local server already running (the bridge starts none)."""
    from aesq.cli.local_prefect import configured_api_url, running_server
    from aesq.servers.bridge import api_answers, bridge_server, s3_sources

    settings = get_settings()
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise CliError(f"--listen takes host:port, not {listen!r}")
    if host not in LOOPBACK and not settings.bridge_token:
        raise CliError("listening beyond loopback needs AESQ_BRIDGE_TOKEN (MinIO sends it as the webhook auth_token)")
    if not s3_sources(settings.sources):
        raise CliError("no s3:// source configured: set AESQ_SOURCES (the bridge queues objects of those only)")
    if api_url := configured_api_url():
        if not api_answers(api_url):
            raise CliError(f"the Prefect API at {api_url} (PREFECT_API_URL) does not answer: start it, or fix the URL")
    elif local := running_server(settings.data_dir):
        api_url = local.api_url
    else:
        raise CliError(
            "no Prefect API to send events to: set PREFECT_API_URL to the Prefect API your `aesq worker` uses, or run "
            "`aesq worker` on this host first, in another terminal (it starts aesq's local Prefect server)"
        )
    settings = _ready_settings()
    # Two lines on purpose, each unwrapped: a narrow terminal then never breaks them mid-sentence or mid-URL.
    console.print(f"bridge listening on http://{listen}", soft_wrap=True)
    console.print(f"sending events to {api_url}", soft_wrap=True)
    bridge_server(host or "127.0.0.1", int(port), settings, api_url).run()  # stopping sends the events still due


@app.command()
def worker(
    pool: Annotated[str | None, typer.Option(help="Serve this scoring pool (AESQ_POOLS) instead of the flows.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device of this pool worker, e.g. cuda:1.")] = None,
    name: Annotated[str | None, typer.Option(help="Pool worker name, unique per GPU (default host-device).")] = None,
    prefetch: Annotated[int, typer.Option(min=1, help="Batches a pool worker prepares at once.")] = 2,
    health_port: Annotated[
        int | None,
        typer.Option(help="Pool worker: answer GET /healthz on this port once its models are loaded (probes)."),
    ] = None,
) -> None:
    """Serve the chain (ingest each of AESQ_SOURCES on an interval → score → aggregate and analyse
    defects; the nightly report), or (--pool) score batches for one scoring pool with its models loaded once."""
    from aesq.core.scoring import check_device
    from aesq.tasks.result_storage import check_result_storage

    if health_port is not None and pool is None:
        raise CliError(
            "--health-port is a pool worker's (--pool); the flows worker's health is Prefect's runner: set "
            "PREFECT_RUNNER_SERVER_ENABLE=true and ask GET /health on 127.0.0.1:8080"
        )
    settings = _ready_settings()
    if pool is not None:
        from aesq.servers.scoring_pool import serve_scoring_pool

        check_device(settings.for_pool(pool, device), "--device" if device else f"AESQ_POOLS.{pool}.device")
        check_result_storage(settings)
        worker_name = name or f"{socket.gethostname()}-{settings.for_pool(pool, device).device}"
        with _prefect_client_retries(), _prefect_api():
            serve_scoring_pool(settings, pool, worker_name, device, prefetch, health_port)
        return
    from prefect import serve

    from aesq.flows.deployments import deployments

    if not settings.sources:
        raise CliError("no sources configured: set AESQ_SOURCES (e.g. s3://images/)")
    check_device(settings)
    if settings.pools:
        check_result_storage(settings)
    with _prefect_client_retries(), _prefect_api():
        serve(*deployments(settings))


def _number(value: float | None, digits: int = 3) -> str:
    """A statistic for a table; "—" where it is undefined."""
    return "—" if value is None else f"{value:.{digits}f}"


@bench_app.command("labels")
def bench_labels(
    data: Annotated[Path, typer.Option(help="folder with test.json (or test/test.json) and the images")],
    scorer: Annotated[str, typer.Option(help="scorer to benchmark; enabled for this run if it is not")],
    bootstrap: Annotated[int, typer.Option(min=100, help="bootstrap resamples for the 95 % intervals")] = 2000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's logs")] = False,
) -> None:
    """Score a labelled set through the flows and report agreement with the human scores (SRCC, PLCC, bias)."""
    from aesq.analysis.labels import LabelError, label_report, labelled_pairs, read_labels
    from aesq.core.namespaces import prepare_namespace
    from aesq.core.scoring import check_device, check_model_names

    try:
        labels = read_labels(data)
    except LabelError as error:
        raise CliError(str(error)) from None
    settings = _ready_settings()
    scorers = list(dict.fromkeys([*settings.scorers, scorer]))  # enabled for this run if it is not
    check_model_names(settings.for_run(scorers))
    check_device(settings.for_run(scorers))
    labelled = prepare_namespace(settings, "labels")  # held out: never in production data
    with _quiet_prefect(verbose):
        _run_with_progress(labelled, str(data), verbose, scorers, namespace="labels")
    pairs, excluded = labelled_pairs(settings, data, labels, scorer)
    if excluded:
        console.print(f"excluded {len(excluded)} of {len(labels)} labelled images (no {scorer} score):")
        for failure in excluded:
            console.print(f"  {failure.location}: {failure.error}", soft_wrap=True, highlight=False)
    report = label_report(pairs, bootstrap, seed)

    console.print(f"{scorer} against human scores: {report.count} images", highlight=False)
    summary = FittedTable(("metric", "value", "95 % CI (bootstrap)"), right=frozenset({1, 2}))
    for name, estimate in (("SRCC", report.srcc), ("PLCC", report.plcc)):
        interval = "—" if estimate.low is None else f"[{estimate.low:.3f}, {estimate.high:.3f}]"
        summary.add_row(name, _number(estimate.value), interval)
    _print_table(summary)
    if report.slope is not None and report.intercept is not None:
        console.print(
            f"linear fit to the human scale: human ≈ {report.slope:.4g} × {scorer} "
            f"{'−' if report.intercept < 0 else '+'} {abs(report.intercept):.4g}; "
            "PLCC after this fit = |PLCC| above (a linear map changes Pearson's r at most in sign)",
            highlight=False,
        )
    if report.categories:
        console.print("per category (bias: mean of fitted prediction − human score)")
        table = FittedTable(("category", "n", "SRCC", "bias"), right=frozenset({1, 2, 3}))
        for row in report.categories:
            bias = "—" if row.bias is None else f"{row.bias:+.3f}"
            table.add_row(row.category, str(row.count), _number(row.srcc), bias)
        _print_table(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


@bench_app.command("forget")
def bench_forget(
    data: Annotated[Path, typer.Option(help="a labelled folder that an older aesq scored in production")],
    yes: Annotated[bool, typer.Option("--yes", help="remove them (without it, only count them)")] = False,
) -> None:
    """Remove from production the assets of a labelled folder that `aesq bench labels` scored there before it
    kept labelled sets in a database of their own."""
    from aesq.analysis.labels import LabelError, read_labels
    from aesq.core.namespaces import check_forgettable, leaked_labels

    try:
        keys = [label.image for label in read_labels(data)]  # only the images its label file names
    except LabelError as error:
        raise CliError(str(error)) from None
    check_forgettable(get_settings(), data)  # before the database starts: nothing of production's is touched
    leaked = leaked_labels(_ready_settings(), data, keys, remove=yes)
    found = f"{leaked.assets} labelled assets under {leaked.location} in production ({leaked.scored} scored)"
    if not leaked.assets:
        message = f"no labelled assets under {leaked.location} in production"
    elif yes:
        message = f"removed {found}"
    else:
        more = f", … {leaked.assets - len(leaked.sample)} more" if leaked.assets > len(leaked.sample) else ""
        message = f"{found}: {', '.join(leaked.sample)}{more}; run again with --yes to remove them"
    console.print(message, highlight=False, soft_wrap=True)


@models_app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(help="a scorer or embedder, e.g. ernie-aes")],
    images: Annotated[
        list[Path] | None, typer.Argument(exists=True, help="image files, or folders of them, to score")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(exists=True, help="weights folder, or the model's checkpoint folder (default AESQ_WEIGHTS_DIR)"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default AESQ_DEVICE)")] = None,
) -> None:
    """Check a model's checkpoint where it lies: the config fields aesq depends on, its tokenizer (as aesq loads it
    and as built from the vocabulary files) on every prompt aesq sends, and, given IMAGES, their scores and how
    much of the answer falls on the score tokens. Exit status 1 when a check fails; the first thing to run on a
    machine with the real weights."""
    from aesq.core.model_check import check_model, image_paths, model_class
    from aesq.core.scoring import check_device

    model_class(name)
    settings = get_settings()
    settings = settings.model_copy(
        update={"weights_dir": weights or settings.weights_dir, "device": device or settings.device, "pools": {}}
    )
    check_device(settings, "--device" if device else "AESQ_DEVICE")
    try:
        report = check_model(name, settings, image_paths(images or []))
    except OSError as error:  # no checkpoint there: the model's own message says where it looked
        raise CliError(str(error)) from None
    console.print(f"{name} on {settings.device}", highlight=False)
    _print_table(_checks_table(report.checks))
    scored = [result for result in report.images if result.problem is None]
    if scored:
        columns = list(dict.fromkeys(column for result in scored for column in result.figures))
        table = FittedTable(("image", *columns), right=frozenset(range(1, len(columns) + 1)), whole_names=False)
        for result in scored:
            table.add_row(str(result.path), *(f"{result.figures[column]:.4g}" for column in columns))
        _print_table(table)
    for result in report.images:
        if result.problem is not None:
            console.print(f"{result.path}: {result.problem}", highlight=False)
    if report.outcome:
        _print_table(_checks_table(report.outcome))
    verdicts = [check.status for check in [*report.checks, *report.outcome]]
    console.print(
        f"{name}: " + ", ".join(f"{verdicts.count(status)} {status}" for status in ("ok", "warn", "fail")),
        highlight=False,
    )
    if report.failed:
        raise typer.Exit(1)


def _checks_table(checks: list[Check]) -> FittedTable:
    """Checks as a table: what, the verdict, and the values behind it (wrapped)."""
    table = FittedTable(("check", "verdict", "detail"), wrap=frozenset({2}))
    for check in checks:
        table.add_row(check.subject, check.status, check.detail)
    return table


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply schema migrations (to head by default)."""
    from aesq.core import database

    settings = get_settings()
    database.upgrade(revision, settings=settings)
    console.print(f"database at revision {database.current_revision(settings)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target, e.g. -1 or base")] = "-1") -> None:
    """Revert schema migrations (one step by default)."""
    from aesq.core import database

    settings = get_settings()
    database.downgrade(revision, settings=settings)
    console.print(f"database at revision {database.current_revision(settings)}")


@db_app.command("current")
def db_current() -> None:
    """The revision the database is at, marked (head) when no migration is left to apply."""
    from aesq.cli.revisions import history, stored_revision

    current = stored_revision(get_settings())
    heads = {revision.revision for revision in history() if revision.is_head}
    console.print("none (never migrated)" if current is None else current + (" (head)" if current in heads else ""))


@db_app.command("history")
def db_history() -> None:
    """Every migration, newest first, the database's current one marked (current)."""
    from aesq.cli.revisions import history, stored_revision

    current = stored_revision(get_settings())
    for revision in history():
        console.print(revision.line(current, console.width), highlight=False, markup=False, soft_wrap=True)


@db_app.command("start")
def db_start() -> None:
    """Start the embedded Postgres (shared by every aesq process) and print its URL."""
    from aesq.core import database

    settings = get_settings()
    if settings.database_url:
        raise CliError("AESQ_DATABASE_URL is set: aesq uses that database, not the embedded one")
    console.print(database.start_embedded(settings))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres and the local Prefect server (what `aesq stop` does)."""
    stop()


@app.command()
def stop() -> None:
    """Stop every local service aesq started: the embedded Postgres and the local Prefect server."""
    from aesq.cli.local_prefect import stop_server
    from aesq.core import database

    settings = get_settings()
    services = {
        "the embedded Postgres": database.stop_embedded(settings),
        "the local Prefect server": stop_server(settings.data_dir),
    }
    stopped = [name for name, was_running in services.items() if was_running]
    console.print(f"stopped {' and '.join(stopped)}" if stopped else "no local service of aesq was running")


def _one_line(error: BaseException) -> str:
    """An error as one readable line; unexpected kinds keep their type name."""
    from sqlalchemy.exc import DBAPIError

    from aesq.cli.local_prefect import LocalPrefectError
    from aesq.core.database import DatabaseError
    from aesq.core.storage import BatchUnread, ObjectStoreUnreachable

    if isinstance(error, DBAPIError):  # the driver's message, without the statement and its parameters
        return "cannot use the database: " + " ".join(str(error.orig).split())
    message = " ".join(str(error).split()) or type(error).__name__
    expected = (CliError, ConfigurationError, DatabaseError, LocalPrefectError, ObjectStoreUnreachable, BatchUnread)
    return message if isinstance(error, expected) else f"{type(error).__name__}: {message}"


def main() -> None:
    """Entry point: usage errors as Click shows them (exit status 2); other errors become one line on stderr and
    exit status 1 (AESQ_DEBUG=1 shows tracebacks);
    SIGINT and SIGTERM one line too, then the process ends by that signal."""
    for handled in STOP_SIGNALS:
        if signal.getsignal(handled) is not signal.SIG_IGN:  # started with it ignored (nohup, `&`): keep it so
            signal.signal(handled, _stop_on_signal)
    try:
        app()  # usage errors as Click shows them: the usage line, the problem, "Try … --help"; exit status 2
    except Stopped as stopped:
        print_problem("", str(stopped))
        _exit_by_signal(stopped.signum)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", getattr(done, "code", 0))
        _leave(code if isinstance(code, int) else 1 if code else 0)
    except typer.Abort:
        _leave(130)
    except Exception as error:
        if os.environ.get("AESQ_DEBUG"):
            raise
        print_problem("error:", _one_line(error))
        _leave(1)


def _leave(status: int) -> NoReturn:
    """End the process once its work is done as the interpreter would, in its order: the threads' exit hooks
    (Prefect drains its event worker there), then threads that are not daemons finish, then the exit hooks
    (logging flushes, Prefect's log worker drains); but without Python's teardown of every loaded module, which
    takes 0.6 s after a flow run here. A signal meanwhile ends the process by that signal, as it would elsewhere."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # private: what the interpreter runs first at exit
        atexit._run_exitfuncs()  # private: what it runs next
    except Stopped as stopped:
        print_problem("", str(stopped))
        _exit_by_signal(stopped.signum)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
