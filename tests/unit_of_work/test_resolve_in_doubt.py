"""What :func:`wsgi_sqla.resolve_in_doubt` accepts, and what it costs, in statements.

The option reads the transaction id just before COMMIT on a unit that wrote:
exactly one statement more on a writing unit, none on a unit that only read
or did nothing, and none on an engine without it. Counted with the
project's round-trip counter, on engines of their own (the option stays on
an engine for its life, so the shared ones are never given it). What it
settles is tested through a COMMIT-cutting proxy in
tests/server/test_in_doubt_resolved.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text, update
from sqlalchemy.orm import Session, registry, scoped_session, sessionmaker
from support import make_engine, serve, tagged_rows

from wsgi_sqla import IdempotencyKeys, SessionMiddleware, _in_doubt, resolve_in_doubt, transaction
from wsgi_sqla._in_doubt import _options
from wsgi_sqla.testing import RoundTrips, count_round_trips

notes = tagged_rows
metadata = notes.metadata


class Note:
    """A mapped class, for work the ORM flushes only when the unit commits."""

    tag: str


registry().map_imperatively(Note, notes)

Work = Callable[[scoped_session[Session]], object]


NOT_AN_ENGINE: Any = "postgresql://"  # what untyped code can still pass


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda: resolve_in_doubt(NOT_AN_ENGINE), TypeError, id="not-an-engine"),
        pytest.param(
            lambda: resolve_in_doubt(create_engine("sqlite://")), ValueError, id="not-postgresql"
        ),
        pytest.param(
            lambda: resolve_in_doubt(create_engine("postgresql+psycopg://"), wait=-1),
            ValueError,
            id="negative-wait",
        ),
        pytest.param(
            lambda: resolve_in_doubt(create_engine("postgresql+psycopg://"), wait=True),
            TypeError,
            id="wait-not-seconds",
        ),
    ],
)
def test_resolve_in_doubt_refuses_bad_arguments_clearly(
    call: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"resolve_in_doubt\(\)"):
        call()


def test_resolve_in_doubt_returns_its_engine() -> None:
    engine = create_engine("postgresql+psycopg://")
    assert resolve_in_doubt(engine) is engine
    assert resolve_in_doubt(engine, wait=1) is engine  # again: only the wait changes


# -- the cost, on PostgreSQL ----------------------------------------------------------------

pg = pytest.mark.parametrize("db_name", ["postgresql"], indirect=True)


@pytest.fixture
def engines(engine: Engine) -> Iterator[tuple[Engine, Engine]]:
    """(without the option, with it): two engines of their own on the database under test."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    url = engine.url.render_as_string(hide_password=False)
    off, on = make_engine(url), resolve_in_doubt(make_engine(url))
    for made in (off, on):
        with made.connect():
            pass  # the dialect's first-connect queries are not counted
    try:
        yield off, on
    finally:
        off.dispose()
        on.dispose()
        metadata.drop_all(engine)


def _add_note(db: scoped_session[Session]) -> None:
    note = Note()
    note.tag = "orm"
    db.add(note)  # flushed by the commit, after the unit decided


WORK: dict[str, tuple[Work, int]] = {
    # work: (what the unit does, statements the option adds)
    "insert": (lambda db: db.execute(insert(notes).values(tag="a")), 1),
    "update": (lambda db: db.execute(update(notes).values(tag="b")), 1),
    "textual insert": (
        lambda db: db.execute(text("INSERT INTO wsgi_sqla_in_doubt (tag) VALUES ('t')")),
        1,
    ),
    "orm add flushed by the commit": (_add_note, 1),
    "select for update": (lambda db: db.execute(select(notes).with_for_update()).all(), 1),
    "select": (lambda db: db.execute(select(notes)).all(), 0),
    "textual select": (lambda db: db.execute(text("SELECT 1")).all(), 0),
    "nothing": (lambda db: None, 0),
}


def _request_counts(engine: Engine, work: Work) -> RoundTrips:
    db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))

    def app(environ: Any, start_response: Any) -> list[bytes]:
        work(db)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with count_round_trips(engine) as counts:
        assert serve(SessionMiddleware(app, db)).status == "200 OK"
    return counts


def _block_counts(engine: Engine, work: Work) -> RoundTrips:
    db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))
    with count_round_trips(engine) as counts, transaction(db):
        work(db)
    return counts


@pg
@pytest.mark.parametrize("owner", [_request_counts, _block_counts], ids=["request", "block"])
@pytest.mark.parametrize(("work", "added"), list(WORK.values()), ids=list(WORK))
def test_the_option_adds_one_statement_to_a_writing_unit_and_none_to_others(
    engines: tuple[Engine, Engine],
    owner: Callable[[Engine, Work], RoundTrips],
    work: Work,
    added: int,
) -> None:
    off, on = engines
    without, with_option = owner(off, work), owner(on, work)
    assert with_option.statements == without.statements + added
    assert (with_option.begin, with_option.commit, with_option.checkouts) == (
        without.begin,
        without.commit,
        without.checkouts,
    )


@pg
def test_an_engine_without_the_option_costs_what_it_did_beside_one_with_it(
    engines: tuple[Engine, Engine],
) -> None:
    off, _on = engines
    insert_note = WORK["insert"][0]
    # The committed request of tests/test_middleware_cost.py: not one statement more.
    assert _request_counts(off, insert_note) == RoundTrips(
        statements=1, begin=1, commit=1, checkouts=1, resets=1
    )


# -- what the lookup answers, for a transaction left in each state -------------------------


@pg
@pytest.mark.parametrize("modern", [True, False], ids=["pg_xact_status", "txid_status"])
@pytest.mark.parametrize(
    ("end", "answer", "said"),
    [
        pytest.param("commit", True, "'committed'", id="committed"),
        pytest.param("rollback", False, "'aborted'", id="aborted"),
        pytest.param(None, None, "'in progress' after 0.2 s", id="still-in-progress"),
    ],
)
def test_the_lookup_answers_the_transaction_state_and_waits_while_in_progress(
    engines: tuple[Engine, Engine],
    monkeypatch: pytest.MonkeyPatch,
    modern: bool,
    end: str | None,
    answer: bool | None,
    said: str,
) -> None:
    off, on = engines
    option = _options[resolve_in_doubt(on, wait=0.2)]
    waits: list[float] = []
    monkeypatch.setattr(_in_doubt, "sleep", lambda seconds: waits.append(seconds))
    read = "pg_current_xact_id" if modern else "txid_current"
    with off.connect() as connection:
        connection.execute(insert(notes).values(tag="state"))
        xid = connection.exec_driver_sql(f"SELECT CAST({read}() AS text)").scalar_one()
        if end == "commit":
            connection.commit()
        elif end == "rollback":
            connection.rollback()
        # Without an end, the transaction is still open while the lookup asks.
        outcome, how = option.status(xid, modern)

    assert outcome is answer
    assert said in how, how
    assert bool(waits) is (end is None), "it waits only while the transaction is in progress"


@pg
def test_a_keyed_request_reads_no_transaction_id_its_key_settles_a_doubt(
    engines: tuple[Engine, Engine],
) -> None:
    keys = IdempotencyKeys()
    off, on = engines
    keys.table.drop(off, checkfirst=True)
    keys.table.create(off)
    counts = {}
    try:
        for name, engine in (("off", off), ("on", on)):
            db: scoped_session[Session] = scoped_session(sessionmaker(bind=engine))

            def app(environ: Any, start_response: Any, db: Any = db) -> list[bytes]:
                db.execute(insert(notes).values(tag="keyed"))
                start_response("201 Created", [("Content-Type", "text/plain")])
                return [b"created"]

            middleware = SessionMiddleware(app, db, idempotency=keys)
            with count_round_trips(engine) as counts[name]:
                seen = serve(middleware, method="POST", environ={"HTTP_IDEMPOTENCY_KEY": name})
            assert seen.status == "201 Created"
    finally:
        keys.table.drop(off)

    assert counts["on"] == counts["off"]
