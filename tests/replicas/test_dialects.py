"""PostgreSQL and MariaDB positions, lag readings and error classes, in process (no database)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import create_engine

from wsgi_sqla._replicas.dialects import (
    MariaDB,
    PostgreSQL,
    dialect_of,
    is_read_only_violation,
    is_write,
    lsn,
)


def test_an_lsn_compares_as_one_number() -> None:
    assert lsn("0/0") == 0
    assert lsn("1/0") == 1 << 32
    assert lsn("16/B374D848") > lsn("16/B374D847") > lsn("15/FFFFFFFF")


@pytest.mark.parametrize(
    ("text", "valid"),
    [("16/B374D848", True), ("0/1", True), ("16/b374d848", False), ("16", False), ("", False)],
)
def test_postgresql_positions_are_upper_case_lsns(text: str, valid: bool) -> None:
    assert PostgreSQL().valid(text) is valid


def test_a_postgresql_replica_has_reached_a_position_at_or_past_it() -> None:
    pg = PostgreSQL()
    seen = pg.parse_replica("16/b374d848")
    assert pg.reached(seen, "16/B374D848")
    assert pg.reached(seen, "16/B374D847")
    assert not pg.reached(seen, "16/B374D849")
    assert not pg.reached(pg.parse_replica(None), "0/1")


@pytest.mark.parametrize(
    ("text", "valid"),
    [("0-1-42", True), ("12-3-99999", True), ("0-1", False), ("a-b-c", False), ("0/1", False)],
)
def test_mariadb_positions_are_gtids(text: str, valid: bool) -> None:
    assert MariaDB().valid(text) is valid


def test_a_mariadb_replica_has_reached_a_gtid_in_its_domain() -> None:
    maria = MariaDB()
    seen = maria.parse_replica("0-1-42, 1-2-7, junk")
    assert seen == {0: 42, 1: 7}
    assert maria.reached(seen, "0-9-42")  # the server id does not matter
    assert not maria.reached(seen, "0-1-43")
    assert not maria.reached(seen, "2-1-1")  # a domain it has not seen
    assert maria.parse_replica(None) == {}


def test_lag_readings() -> None:
    assert PostgreSQL().parse_lag({"lag": 2.5}) == 2.5
    assert PostgreSQL().parse_lag({"lag": -0.1}) == 0.0  # clocks
    assert PostgreSQL().parse_lag({"lag": None}) is None
    assert MariaDB().parse_lag({"Seconds_Behind_Master": 3}) == 3.0
    assert MariaDB().parse_lag({"Seconds_Behind_Master": None}) == math.inf
    assert MariaDB().parse_lag(None) == math.inf  # not a replica


@pytest.mark.parametrize(
    ("statement", "write"),
    [
        ("SELECT 1", False),
        ("  (select 1) union (select 2)", False),
        ("SHOW SLAVE STATUS", False),
        ("EXPLAIN SELECT 1", False),
        ("INSERT INTO t VALUES (1)", True),
        ("update t set a = 1", True),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", True),
    ],
)
def test_writes_are_told_by_statement_text(statement: str, write: bool) -> None:
    assert is_write(statement) is write


class DriverError(Exception):
    def __init__(self, *args: Any, sqlstate: str | None = None) -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate


def test_read_only_violations_of_both_databases() -> None:
    assert is_read_only_violation(DriverError(sqlstate="25006"))
    assert is_read_only_violation(DriverError(1792, "in a READ ONLY transaction"))
    assert is_read_only_violation(DriverError(1290, "--read-only"))
    assert not is_read_only_violation(DriverError(sqlstate="40001"))
    assert not is_read_only_violation(DriverError(1213, "deadlock"))
    assert not is_read_only_violation(DriverError())


def test_the_dialect_of_an_engine() -> None:
    assert isinstance(dialect_of(create_engine("postgresql+psycopg://x@nowhere/db")), PostgreSQL)
    assert isinstance(dialect_of(create_engine("mysql+pymysql://x@nowhere/db")), MariaDB)
    with pytest.raises(ValueError, match=r"^Replicas: replicas are supported on PostgreSQL"):
        dialect_of(create_engine("sqlite://"))
