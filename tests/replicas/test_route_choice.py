"""Which replicas a unit may use, and what a route answers, in process (no database).

The replicas here are real :class:`~wsgi_sqla._replicas.health.Replica`
states over engines for hosts that do not exist; their health and lag are
set by hand, as failures and the lag monitor would set them.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker
from sqlalchemy.util import ScopedRegistry

from wsgi_sqla import POSITION_HEADER, Replicas, transaction
from wsgi_sqla._replicas.dialects import PostgreSQL
from wsgi_sqla._replicas.health import Replica
from wsgi_sqla._replicas.route import Route, candidates
from wsgi_sqla._replicas.tokens import Token


def replica(name: str, max_lag: float | None = 30.0, backoff: float = 5.0) -> Replica:
    engine = create_engine(f"postgresql+psycopg://x@{name}/db")
    return Replica(engine, PostgreSQL(), backoff, max_lag)


def names(chosen: list[Replica]) -> list[str]:
    return [str(r.engine.url.host) for r in chosen]


def test_healthy_replicas_take_turns() -> None:
    replicas = [replica("a"), replica("b"), replica("c")]
    turns = itertools.count()
    now = time.monotonic()
    firsts = [names(candidates(replicas, now, turns))[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert sorted(names(candidates(replicas, now, turns))) == ["a", "b", "c"]


def test_a_failed_replica_is_skipped_for_its_back_off_only() -> None:
    down, up = replica("down", backoff=0.5), replica("up")
    down.fail(ConnectionError("refused"))
    now = time.monotonic()
    assert names(candidates([down, up], now, itertools.count())) == ["up"]
    assert sorted(names(candidates([down, up], now + 0.6, itertools.count()))) == ["down", "up"]
    down.recovered()
    assert down.down_until == 0.0


def test_a_replica_over_its_lag_bound_is_skipped_while_the_reading_is_fresh() -> None:
    slow, fast = replica("slow", max_lag=1), replica("fast", max_lag=1)
    now = time.monotonic()
    slow.lag, slow.lag_read_at = 3.0, now
    fast.lag, fast.lag_read_at = 0.5, now
    assert names(candidates([slow, fast], now, itertools.count())) == ["fast"]
    # A reading nobody refreshed for ten intervals (at least 2 s; 2.5 s here) says nothing.
    assert len(candidates([slow, fast], now + 3, itertools.count())) == 2


def test_a_replica_not_replicating_is_skipped() -> None:
    stopped = replica("stopped", max_lag=86400)
    stopped.lag, stopped.lag_read_at = math.inf, time.monotonic()
    assert candidates([stopped], time.monotonic(), itertools.count()) == []


def test_without_a_bound_lag_does_not_matter() -> None:
    unbounded = replica("slow", max_lag=None)
    unbounded.lag, unbounded.lag_read_at = 600.0, time.monotonic()
    assert names(candidates([unbounded], time.monotonic(), itertools.count())) == ["slow"]
    assert unbounded.lag_interval() == 1.0


@pytest.mark.parametrize(("max_lag", "interval"), [(30, 1.0), (1, 0.25), (0.1, 0.05)])
def test_the_lag_is_measured_at_a_quarter_of_the_bound(max_lag: float, interval: float) -> None:
    assert replica("r", max_lag=max_lag).lag_interval() == interval


def test_one_lag_bound_per_replicas_object() -> None:
    engine = create_engine("postgresql+psycopg://x@shared/db")
    db: scoped_session[Any] = scoped_session(
        sessionmaker(bind=create_engine("postgresql+psycopg://x@primary/db"))
    )
    strict = Replicas({db: [engine]}, max_lag=1)
    lenient = Replicas({db: [engine]}, max_lag=60)
    now = time.monotonic()
    for replicas in (strict, lenient):
        (state,) = replicas.primaries[0].replicas
        state.lag, state.lag_read_at = 5.0, now
    assert candidates(strict.primaries[0].replicas, now, strict.turns) == []
    assert len(candidates(lenient.primaries[0].replicas, now, lenient.turns)) == 1


# -- what a route answers -----------------------------------------------------------


@pytest.fixture
def replicas() -> Replicas:
    db: scoped_session[Any] = scoped_session(
        sessionmaker(bind=create_engine("postgresql+psycopg://x@primary/db"))
    )
    return Replicas({db: [create_engine("postgresql+psycopg://x@r1/db")]}, secret="s" * 16)


def test_a_committed_write_answered_below_400_gets_a_token(replicas: Replicas) -> None:
    route = Route(replicas, replica_ok=False, token=None, what="request")
    route.committed = ("16/B374D848",)
    headers: list[tuple[str, str]] = []
    route.respond("201 Created", headers)
    (cookie_name, cookie), (header_name, value) = headers
    assert (cookie_name, header_name) == ("Set-Cookie", POSITION_HEADER)
    assert cookie.startswith(f"wsgi_sqla_position={value}; Max-Age=30;")
    token = replicas.tokens.parse(value)
    assert token is not None and token.positions == ("16/B374D848",)
    refused: list[tuple[str, str]] = []
    route.respond("409 Conflict", refused)
    assert refused == []


def test_a_token_every_replica_has_is_dropped(replicas: Replicas) -> None:
    route = Route(replicas, replica_ok=True, token=Token(0, ("0/1",)), what="request")
    headers: list[tuple[str, str]] = []
    route.respond("200 OK", headers)
    assert headers == []  # not known to be everywhere yet
    route.token_drop = True
    route.respond("200 OK", headers)
    assert headers == [
        ("Set-Cookie", "wsgi_sqla_position=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"),
        (POSITION_HEADER, ""),
    ]


def test_a_route_finds_the_state_of_its_replica_engines(replicas: Replicas) -> None:
    route = Route(replicas, replica_ok=True, token=None)
    (state,) = replicas.primaries[0].replicas
    assert route.replica_for(state.engine) is state
    assert route.replica_for(create_engine("postgresql+psycopg://x@r1/db")) is None


def test_use_primary_before_any_query_routes_to_the_primary(replicas: Replicas) -> None:
    route = Route(replicas, replica_ok=True, token=None)
    route.use_primary()
    assert route.replica_ok is False


# -- the session-creation hook (SQLAlchemy internals it relies on) -------------------


def test_sessions_created_in_a_routed_block_bind_through_its_route(replicas: Replicas) -> None:
    # ScopedRegistry.createfunc is not public SQLAlchemy API: this fails if it changes.
    db = replicas.primaries[0].scoped
    assert isinstance(db.registry, ScopedRegistry)
    assert getattr(db.registry.createfunc, "_wsgi_sqla_routed", False)
    plain = db()
    assert "get_bind" not in vars(plain)  # outside a routed unit: untouched
    db.remove()
    with transaction(db, replicas=replicas):
        routed = db()
        assert "get_bind" in vars(routed)
        assert routed.join_transaction_mode == "control_fully"
