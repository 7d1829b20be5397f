"""The ActiveRecord base: save(), update(), delete() flush but never commit.

Database state is read through ``probe``'s own connection, so "flushed but
not committed" shows as absent.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String
from sqlalchemy.exc import IntegrityError, SAWarning
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from support import Models, Probe

from wsgi_sqla import ActiveRecordMixin, declarative_base, transaction
from wsgi_sqla.testing import RoundTrips, count_round_trips


def test_save_flushes_at_once_and_returns_the_instance(session: Any, models: Models) -> None:
    user = models.User(name="ann")
    assert user.save() is user
    assert user.id is not None, "save() must flush, which assigns the primary key"
    assert user in session()


def test_save_never_commits(session: Any, models: Models, probe: Probe) -> None:
    models.User(name="ann").save()
    assert probe.names() == []
    session.rollback()
    assert session.scalars(models.User.query.statement).all() == []


def test_save_surfaces_a_constraint_violation_as_the_original_integrity_error(
    session: Any, models: Models, probe: Probe
) -> None:
    models.User(name="ann").save()
    session.commit()
    with pytest.raises(IntegrityError):
        models.User(name="ann").save()
    assert probe.names() == ["ann"]


def test_failed_save_raises_and_leaves_the_sessions_earlier_work_alone(
    session: Any, models: Models, probe: Probe
) -> None:
    models.User(name="ann").save()
    session.commit()
    models.User(name="bob").save()
    with pytest.raises(IntegrityError):
        models.User(name="ann").save()
    assert session().in_transaction(), "save() rolled the session back behind the caller"
    session.rollback()  # the application's own decision
    models.User(name="cid").save()
    session.commit()
    assert probe.names() == ["ann", "cid"]


def test_failed_save_in_a_savepoint_undoes_only_itself(
    session: Any, models: Models, probe: Probe
) -> None:
    models.User(name="ann").save()
    session.commit()
    models.User(name="bob").save()
    with pytest.raises(IntegrityError):
        models.User(name="ann").save(savepoint=True)
    models.User(name="cid").save()
    session.commit()
    assert probe.names() == ["ann", "bob", "cid"]


def test_get_returns_the_instance_by_primary_key(session: Any, models: Models) -> None:
    user = models.User(name="ann").save()
    assert models.User.get(user.id) is user


def test_get_returns_none_when_absent(session: Any, models: Models) -> None:
    assert models.User.get(424242) is None


def test_query_property_queries_through_the_scoped_session(session: Any, models: Models) -> None:
    models.User(name="Foo Bar").save()
    assert models.User.query.filter_by(name="Foo Bar").one().name == "Foo Bar"
    assert models.User.query.session is session()


def test_update_sets_attributes_flushes_and_returns_the_instance(
    session: Any, models: Models, engine: Engine, probe: Probe
) -> None:
    user = models.User(name="ann").save()
    session.commit()
    assert user.update(name="Bat") is user
    with Session(engine) as other:  # flushed: this session's own transaction sees it
        assert other.get(models.User, user.id) is not None
    assert session.scalar(models.User.query.with_entities(models.User.name).statement) == "Bat"
    assert probe.names() == ["ann"], "update() must not commit"


def test_update_with_an_unknown_name_raises_before_changing_anything(
    session: Any, models: Models
) -> None:
    user = models.User(name="ann").save()
    with pytest.raises(
        TypeError, match=r"not mapped attribute\(s\) 'nmae'; mapped attributes are: .*name"
    ):
        user.update(name="changed", nmae="typo")
    assert user.name == "ann"
    assert user not in session().dirty


def test_update_rejects_plain_python_attributes(session: Any, models: Models) -> None:
    user = models.User(name="ann").save()
    with pytest.raises(TypeError, match="'save'"):
        user.update(save="not a column")


def test_failed_update_reraises_integrity_error_without_rolling_back(
    session: Any, models: Models, probe: Probe
) -> None:
    models.User(name="ann").save()
    bob = models.User(name="bob").save()
    session.commit()
    with pytest.raises(IntegrityError):
        bob.update(name="ann")
    assert session().in_transaction()
    session.rollback()
    assert probe.names() == ["ann", "bob"]


def test_delete_flushes_and_never_commits(session: Any, models: Models, probe: Probe) -> None:
    user = models.User(name="ann").save()
    session.commit()
    user.delete()
    assert models.User.get(user.id) is None
    assert probe.names() == ["ann"]
    session.commit()
    assert probe.names() == []


def test_failed_delete_in_a_savepoint_reraises_and_undoes_only_itself(
    session: Any, models: Models, probe: Probe
) -> None:
    user_id = models.User(name="ann").save().id
    models.Post(title="keeps ann alive", author_id=user_id).save()
    session.commit()
    session.expunge_all()  # so the ORM cannot cascade; the foreign key refuses the delete
    models.User(name="bob").save()
    with pytest.raises(IntegrityError):
        models.User.get(user_id).delete(savepoint=True)
    session.commit()
    assert probe.names() == ["ann", "bob"]


def test_declarative_base_supports_mapped_annotations(session: Any, engine: Engine) -> None:
    Model = declarative_base(session)

    class Thing(Model):  # type: ignore[misc,valid-type]
        __tablename__ = "wsgi_sqla_things"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(String(20))

    Model.metadata.create_all(engine)
    try:
        assert Thing(label="x").save().id is not None
    finally:
        session.remove()
        Model.metadata.drop_all(engine)


def test_declarative_base_refuses_a_session_that_is_not_scoped(engine: Engine) -> None:
    with pytest.raises(TypeError, match="declarative_base\\(\\): session argument 0 must be"):
        declarative_base(sessionmaker(bind=engine))  # type: ignore[arg-type]


def test_mixin_gives_the_same_methods_to_your_own_declarative_base(
    session: Any, engine: Engine, probe: Probe
) -> None:
    class Base(ActiveRecordMixin, DeclarativeBase):
        __session__ = session

    class Gadget(Base):
        __tablename__ = "wsgi_sqla_gadgets"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(20))

    Base.metadata.create_all(engine)
    try:
        gadget = Gadget(name="a").save().update(name="b")
        assert Gadget.get(gadget.id) is gadget
        assert Gadget.query.one().name == "b"
        gadget.delete()
        assert Gadget.get(gadget.id) is None
    finally:
        session.remove()
        Base.metadata.drop_all(engine)


@pytest.mark.parametrize(("savepoint", "statements"), [(False, 1), (True, 3)])
def test_a_save_in_a_savepoint_costs_two_more_statements(
    session: Any, models: Models, engine: Engine, savepoint: bool, statements: int
) -> None:
    """SAVEPOINT and RELEASE SAVEPOINT around the INSERT; nothing else changes."""
    with count_round_trips(engine) as trips, transaction(session):
        models.User(name="ann").save(savepoint=savepoint)
    assert trips == RoundTrips(
        statements=statements, begin=1, commit=1, rollback=0, checkouts=1, resets=1
    )


def test_create_constructs_saves_and_returns_the_instance(
    session: Any, models: Models, probe: Probe
) -> None:
    user = models.User.create(name="ann")
    assert isinstance(user, models.User) and user.id is not None
    assert user in session()
    assert probe.names() == [], "create() flushes, never commits"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda engine: sessionmaker(bind=engine), id="sessionmaker"),
        pytest.param(lambda engine: Session(engine), id="session"),
        pytest.param(lambda engine: "db.session", id="string"),
    ],
)
def test_mixin_refuses_a_session_that_is_not_scoped_when_the_class_is_defined(
    engine: Engine, bad: Any
) -> None:
    with pytest.raises(TypeError, match=r"Base\.__session__: .* must be a sqlalchemy\.orm\.scoped"):

        class Base(ActiveRecordMixin, DeclarativeBase):
            __session__ = bad(engine)


@pytest.mark.parametrize("call", ["save", "create"])
def test_a_sqlalchemy_warning_raised_by_a_save_points_at_the_callers_line(
    session: Any, engine: Engine, call: str
) -> None:
    Model = declarative_base(session)

    class Parent(Model):  # type: ignore[misc,valid-type]
        __tablename__ = "wsgi_sqla_parents"
        id: Mapped[int] = mapped_column(primary_key=True)
        kids: Mapped[list[Kid]] = relationship(cascade="")  # children are not added with it

    class Kid(Model):  # type: ignore[misc,valid-type]
        __tablename__ = "wsgi_sqla_kids"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int | None] = mapped_column(ForeignKey("wsgi_sqla_parents.id"))

    Model.metadata.create_all(engine)
    try:
        with pytest.warns(SAWarning, match="not in session") as caught:
            line = sys._getframe().f_lineno + 1
            Parent(kids=[Kid()]).save() if call == "save" else Parent.create(kids=[Kid()])
        assert (caught[0].filename, caught[0].lineno) == (__file__, line)
    finally:
        session.remove()
        Model.metadata.drop_all(engine)
