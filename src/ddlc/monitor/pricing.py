"""Instance price table and the running-cost estimate of a job.

The shipped table (`prices.yaml` next to this module) is a starting point; a user file named by the
`price_table` argument or the `DDLC_PRICE_TABLE` environment variable overrides entries in it:

    path -> _read_override (at most 1 MiB + 1 byte; directory, socket, binary: one-line UserError)
         -> _parse_table (YAML `prices:` mapping of instance type -> USD per hour >= 0) -> dict over the shipped one
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Mapping

import yaml

from ddlc.errors import UserError

PRICE_TABLE_ENV = "DDLC_PRICE_TABLE"
LOCAL_INSTANCE_TYPE = "cpu-local"  # what a job without an instance type is priced as


def _parse_table(text: str, source: str) -> dict[str, float]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"price table {source} is not valid YAML: {' '.join(str(error).split())[:200]}") from error
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"price table {source}: {str(error)[:120]}") from error
    if not isinstance(document, dict) or not isinstance(document.get("prices"), dict):
        raise UserError(f"price table {source} must have a `prices` mapping of instance type -> USD per hour")
    table: dict[str, float] = {}
    for instance_type, price in document["prices"].items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            raise UserError(f"price table {source}: prices.{instance_type} must be a number >= 0, got {price!r}")
        table[str(instance_type)] = float(price)
    return table


def default_price_table() -> dict[str, float]:
    text = resources.files("ddlc.monitor").joinpath("prices.yaml").read_text()
    return _parse_table(text, "ddlc/monitor/prices.yaml")


def load_price_table(path: Path | str | None = None) -> dict[str, float]:
    """The shipped table with the user's entries on top (from `path`, else `$DDLC_PRICE_TABLE`, else none)."""
    table = default_price_table()
    if path is None:
        path = os.environ.get(PRICE_TABLE_ENV) or None
    if path is not None:
        override = Path(path)
        table.update(_parse_table(_read_override(override), str(override)))
    return table


MAX_PRICE_TABLE_BYTES = 1 << 20  # 1 MiB: the shipped table is about 3 KB


def _read_override(path: Path) -> str:
    """The user's file as text: at most MAX_PRICE_TABLE_BYTES + 1 bytes read, so /dev/zero, /dev/urandom or a
    huge file are one-line errors, not a full memory; a FIFO nobody writes to reads as empty, never hangs."""
    from ddlc.bounded_read import read_at_most

    if path.is_socket():
        raise UserError(f"price table {path} is a socket, not a YAML file")
    try:
        data = read_at_most(path, MAX_PRICE_TABLE_BYTES + 1)
    except IsADirectoryError:
        raise UserError(f"price table {path} is a directory, not a YAML file") from None
    except OSError as error:
        raise UserError(f"price table {path} cannot be read: {error.strerror or error}") from error
    if not data:  # also what a FIFO nobody writes to reads as
        raise UserError(f"price table {path} is empty; expected a YAML `prices:` mapping")
    if len(data) > MAX_PRICE_TABLE_BYTES:
        raise UserError(f"price table {path}: over {MAX_PRICE_TABLE_BYTES:,} bytes is not a price table")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:  # a binary file named by mistake
        raise UserError(f"price table {path} is not UTF-8 text (byte {error.start})") from error


def hourly_price(instance_type: str | None, table: Mapping[str, float]) -> float:
    key = instance_type or LOCAL_INSTANCE_TYPE
    if key not in table:
        raise UserError(
            f"instance type {key!r} has no price in the price table; add it to a file named by ${PRICE_TABLE_ENV}"
        )
    return table[key]


def estimate_cost_usd(hourly_usd: float, num_nodes: int, wall_seconds: float) -> float:
    """price per node-hour x nodes x hours of wall time."""
    if num_nodes < 1:
        raise UserError(f"num_nodes must be at least 1, got {num_nodes}")
    return hourly_usd * num_nodes * max(wall_seconds, 0.0) / 3600.0
