"""``nbiafs query ENDPOINT [--param NAME=VALUE ...] [--format json|csv|table]``: any metadata endpoint, raw.

Rows are printed as the server sent them: ``json`` pretty-printed, ``csv`` with a header made of the union of
every row's keys (first-seen order), ``table`` as aligned columns. The advanced API (``get*ValuesAndCounts``,
getCollectionDescriptions, getDicomTags, getCollectionOrSeriesForDOI, getSimpleSearch,
getManifestForSimpleSearch) goes where the server profile keeps it, its POSTs with the ``--param`` values as
the form. ``--metadata`` prints the v3 ``<endpoint>/metadata`` description instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from typing import Any, TextIO

from nbiafs.cli.logs import add_logging_options
from nbiafs.cli.options import add_server_options, client_from_args
from nbiafs.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

FORMATS = ("json", "csv", "table")
MAX_CELL = 64  # characters shown per table cell (a UID's longest); longer values are cut with an ellipsis


def register(subparsers: Any) -> None:
    """Add the ``query`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    parser = subparsers.add_parser(
        "query",
        help="run one metadata endpoint and print its rows",
        description="Run one NBIA metadata endpoint (getCollectionValues, getSeries, ...); print its rows.",
    )
    parser.add_argument("endpoint", metavar="ENDPOINT", help="endpoint name, e.g. getSeries")
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter (repeatable), e.g. --param Collection=TCGA-BRCA",
    )
    parser.add_argument(
        "--format", "-f", choices=FORMATS, default="json", help="output format (default: json)"
    )
    parser.add_argument(
        "--metadata", action="store_true", help="print the endpoint's description (v3 API only)"
    )
    add_server_options(parser)
    add_logging_options(parser)
    parser.set_defaults(func=run)


def parse_params(items: list[str]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; raises ConfigError for an item without ``=``."""
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param needs NAME=VALUE, not {item!r}")
        params[name.strip()] = value
    return params


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def write_json(rows: Any, out: TextIO) -> None:
    """Rows (or any JSON value) pretty-printed."""
    json.dump(rows, out, indent=2, ensure_ascii=False)
    out.write("\n")


def write_csv(rows: list[dict[str, Any]], out: TextIO) -> None:
    """CSV with a header of the union of keys; missing cells (and ``{}`` rows: a null value) left empty."""
    columns = _columns(rows)
    if not columns:
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(col)) for col in columns])


def write_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    """Aligned columns under a header and a rule; cells longer than MAX_CELL characters are cut; ``{}`` rows
    (a null value) are empty lines."""
    columns = _columns(rows)
    if not columns:
        out.write("(no rows)\n")
        return

    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"

    cells = [[cut(_cell(row.get(col))) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    out.write("  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in cells:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the query; returns the exit status (errors are raised as NbiaError for cli.main to report).

    A reader that stops early (``| head``) ends the output quietly.
    """
    out = out or sys.stdout
    params = parse_params(args.param)
    with client_from_args(args) as client:
        if args.metadata:
            answer: Any = client.endpoint_metadata(args.endpoint)
        else:
            try:
                answer = client.query(args.endpoint, params, fmt="json")
            except NotFoundError as exc:
                if exc.status != 404:
                    raise
                raise ConfigError(
                    f"{client.profile.api_url} has no endpoint {args.endpoint!r} (HTTP 404); endpoint names are "
                    "case-sensitive, e.g. getSeries"
                ) from None
    try:
        if isinstance(answer, str):  # a manifest: the server's own text
            out.write(answer if answer.endswith("\n") or not answer else answer + "\n")
        elif args.metadata or args.format == "json":
            write_json(answer, out)
        elif args.format == "csv":
            write_csv(answer, out)
        else:
            write_table(answer, out)
        out.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): not an error. Point stdout at /dev/null so the interpreter's
        # final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if isinstance(answer, list):
        log.info("%s: %d rows", args.endpoint, len(answer))
    return 0
