"""Price table loading/overrides and the cost estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddlc.errors import UserError
from ddlc.monitor.pricing import default_price_table, estimate_cost_usd, hourly_price, load_price_table

REQUIRED_TYPES = [
    "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5en.48xlarge", "p3.2xlarge", "p3.8xlarge",
    "p3.16xlarge", "p3dn.24xlarge", "g5.xlarge", "g5.12xlarge", "g5.48xlarge", "cpu-local",
]


def test_shipped_table_prices_the_cluster_instance_types() -> None:
    table = default_price_table()
    for instance_type in REQUIRED_TYPES:
        assert instance_type in table
    assert table["cpu-local"] == 0.0
    assert all(price > 0 for name, price in table.items() if name != "cpu-local")
    # bigger instances of a family cost more: a typo in the file would likely break this
    assert table["p3.2xlarge"] < table["p3.8xlarge"] < table["p3.16xlarge"]
    assert table["g5.xlarge"] < table["g5.2xlarge"] < table["g5.48xlarge"]


def test_every_instance_type_the_cluster_runs_has_a_price() -> None:
    """Each worker's agent is started with its own instance type (idle cost) and refuses an unpriced one: a
    type in the instance table without a price would keep that node's agent from starting."""
    from ddlc.infra.instance_types import GPU_INSTANCE_TYPES

    table = default_price_table()
    assert [name for name in GPU_INSTANCE_TYPES if name not in table] == []


def test_user_file_overrides_and_extends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "prices.yaml"
    override.write_text("prices:\n  p4d.24xlarge: 21.96\n  trn1.32xlarge: 21.50\n")
    table = load_price_table(override)
    assert table["p4d.24xlarge"] == 21.96 and table["trn1.32xlarge"] == 21.50
    assert table["p3.2xlarge"] == default_price_table()["p3.2xlarge"]
    monkeypatch.setenv("DDLC_PRICE_TABLE", str(override))
    assert load_price_table()["trn1.32xlarge"] == 21.50


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("prices: [1, 2]", "`prices` mapping"),
        ("p4d.24xlarge: 3", "`prices` mapping"),
        ("prices:\n  p4d.24xlarge: -1\n", "prices.p4d.24xlarge must be a number >= 0"),
        ("prices:\n  p4d.24xlarge: cheap\n", "prices.p4d.24xlarge must be a number >= 0"),
        ("prices: {a: [", "not valid YAML"),
    ],
)
def test_bad_price_files_name_the_problem(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as raised:
        load_price_table(path)
    assert fragment in str(raised.value) and str(path) in str(raised.value)


def test_missing_override_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot be read"):
        load_price_table(tmp_path / "nope.yaml")


def test_unknown_instance_type_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'x9.huge' has no price.*DDLC_PRICE_TABLE"):
        hourly_price("x9.huge", default_price_table())
    assert hourly_price(None, default_price_table()) == 0.0


def test_cost_is_price_times_nodes_times_hours() -> None:
    assert estimate_cost_usd(32.0, num_nodes=4, wall_seconds=1800) == pytest.approx(64.0)
    assert estimate_cost_usd(32.0, num_nodes=1, wall_seconds=-5) == 0.0
    with pytest.raises(UserError, match="num_nodes"):
        estimate_cost_usd(1.0, num_nodes=0, wall_seconds=1)


def _shipped() -> dict:
    import yaml
    from importlib import resources

    return yaml.safe_load(resources.files("ddlc.monitor").joinpath("prices.yaml").read_text())


def test_shipped_table_is_dated_and_every_price_names_its_source() -> None:
    import datetime

    document = _shipped()
    assert isinstance(document.get("as_of"), datetime.date), "prices.yaml needs `as_of: YYYY-MM-DD`"
    assert document["as_of"] >= datetime.date(2025, 6, 1)  # after the 2025 P4/P5 price cut
    sources = document.get("sources") or {}
    for instance_type in document["prices"]:
        if instance_type == "cpu-local":
            continue
        assert isinstance(sources.get(instance_type), str) and sources[instance_type].strip(), instance_type
    assert set(sources) <= set(document["prices"])  # no source for a price that is not there


def test_p4_and_p5_prices_are_after_the_2025_cut() -> None:
    """The June 2025 cut lowered P4 and P5 on-demand prices by a third to nearly a half; the pre-cut list prices
    (p4d 32.7726, p4de 40.9657, p5 98.32, p5en 84.80 as shipped before) overstate every cost on those nodes."""
    table = default_price_table()
    before = {"p4d.24xlarge": 32.7726, "p4de.24xlarge": 40.9657, "p5.48xlarge": 98.32, "p5en.48xlarge": 84.80}
    for instance_type, old in before.items():
        assert table[instance_type] < 0.8 * old, instance_type
    assert table["p4d.24xlarge"] < table["p4de.24xlarge"] and table["p5.48xlarge"] < table["p5en.48xlarge"]


def _price_file_error(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "prices.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError) as raised:
        load_price_table(path)
    return str(raised.value)


def test_price_file_errors_are_one_bounded_line(tmp_path: Path) -> None:
    """A YAML error is folded to one line and cut at 200 characters; Python's own limit on a huge integer at 120;
    a binary file and a missing one say so. Each message names the file."""
    path = tmp_path / "prices.yaml"
    long_tag = _price_file_error(tmp_path, b"prices: !" + b"t" * 300 + b" 1\n")
    prefix = f"price table {path} is not valid YAML: "
    assert long_tag.startswith(prefix + "could not determine a constructor for the tag '!ttt")
    assert len(long_tag) == len(prefix) + 200 and "\n" not in long_tag and "  " not in long_tag
    huge = _price_file_error(tmp_path, b"prices:\n  a: " + b"1" * 5000 + b"\n")
    assert huge.startswith(f"price table {path}: Exceeds the limit (4300 digits)")
    assert len(huge) == len(f"price table {path}: ") + 120
    assert _price_file_error(tmp_path, b"\xffprices:\n") == f"price table {path} is not UTF-8 text (byte 0)"
    with pytest.raises(UserError, match=r"cannot be read: No such file or directory$"):
        load_price_table(tmp_path / "nope.yaml")


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "fifo", "big", "directory", "env:/dev/zero"])
def test_a_price_table_that_never_ends_or_is_no_file_is_one_line_exit_2(tmp_path: Path, source: str) -> None:
    """/dev/zero filled the memory (6 GB in 6 s), /dev/urandom and a FIFO nobody writes to hung the report; the
    docs promise a one-line error with exit code 2. Under a 2 GiB address-space limit and a timeout."""
    import os
    import resource
    import subprocess
    import sys

    name = source.removeprefix("env:")
    path = Path(name) if name.startswith("/") else tmp_path / name
    if name == "fifo":
        os.mkfifo(path)
    elif name == "big":
        with path.open("wb") as handle:
            handle.truncate(1 << 40)  # sparse: 1 TiB that takes no disk
    elif name == "directory":
        path.mkdir()
    option = [] if source.startswith("env:") else ["--price-table", str(path)]
    env = {**os.environ, "DDLC_PRICE_TABLE": str(path)} if source.startswith("env:") else dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "ddlc", "report", "utilization", "--runs-dir", str(tmp_path),
                             "-o", str(tmp_path / "r.md"), "--no-cache", *option], capture_output=True, text=True,
                            timeout=120, env=env,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and f"price table {path}" in result.stderr, result.stderr
    assert not (tmp_path / "r.md").exists()
    if name == "fifo":
        assert "is empty" in result.stderr


def test_a_price_table_from_a_pipe_is_read(tmp_path: Path) -> None:
    """`--price-table <(generate-prices)`: a FIFO with a writer is read like a file, as hostfiles are."""
    import os
    import threading

    fifo = tmp_path / "prices"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("w") as handle:  # blocks until the reader opens it
            handle.write("prices:\n  trn1.32xlarge: 21.5\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert load_price_table(fifo)["trn1.32xlarge"] == 21.5
    writer.join(timeout=30)


def test_an_oversized_price_table_names_the_limit(tmp_path: Path) -> None:
    from ddlc.monitor.pricing import MAX_PRICE_TABLE_BYTES

    path = tmp_path / "prices.yaml"
    path.write_bytes(b"prices: {}\n" + b"#" * MAX_PRICE_TABLE_BYTES)
    with pytest.raises(UserError) as raised:
        load_price_table(path)
    assert str(raised.value) == f"price table {path}: over {MAX_PRICE_TABLE_BYTES:,} bytes is not a price table"
    path.write_bytes(b"prices: {a: 1}\n".ljust(MAX_PRICE_TABLE_BYTES - 1, b" ") + b"\n")  # exactly at the limit
    assert load_price_table(path)["a"] == 1.0


def test_a_socket_as_price_table_is_named_as_one() -> None:
    import shutil
    import socket
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ddlc-sock-", dir="/tmp"))  # a short path: AF_UNIX allows ~107 bytes
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(folder / "s"))
        with pytest.raises(UserError) as raised:
            load_price_table(folder / "s")
        assert str(raised.value) == f"price table {folder / 's'} is a socket, not a YAML file"
    finally:
        listener.close()
        shutil.rmtree(folder)
