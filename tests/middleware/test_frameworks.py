"""Flask and Bottle idioms that hand-written hooks get wrong: streamed bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle
import flask
import pytest
import webtest
from support import FakeServer, Models, Probe
from werkzeug.test import create_environ

from wsgi_sqla import SessionMiddleware


def test_flask_streamed_template_lazy_loads_and_its_writes_commit_at_close(
    session: Any, models: Models, probe: Probe
) -> None:
    app = flask.Flask(__name__)

    @app.get("/stream")
    def stream() -> flask.Response:
        user = models.User(name="ann").save()
        models.Post(title="first", author=user).save()

        def rows() -> Iterator[str]:
            for post in user.posts:  # lazy load after the decision committed
                yield f"{user.name}:{post.title};"
            models.User(name="written-while-streaming").save()

        return flask.Response(flask.stream_with_context(rows()), mimetype="text/plain")

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    assert webtest.TestApp(app).get("/stream").text == "ann:first;"
    assert probe.names() == ["ann", "written-while-streaming"]
    assert probe.checked_out() == 0


def test_flask_abort_rolls_back(session: Any, models: Models, probe: Probe) -> None:
    app = flask.Flask(__name__)

    @app.post("/")
    def create() -> str:
        models.User(name="ann").save()
        flask.abort(403)

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    webtest.TestApp(app).post("/", status=403)
    assert probe.names() == []


def bottle_generator_app(models: Models) -> bottle.Bottle:
    """A Bottle generator route that saves a user before its first yield and one after."""
    app = bottle.Bottle()

    @app.get("/")
    def listing() -> Iterator[str]:
        models.User(name="before-first-yield").save()
        yield "one;"
        models.User(name="after-first-yield").save()
        yield "two;"

    return app


def test_bottle_generator_body_commits_after_streaming(
    session: Any, models: Models, probe: Probe
) -> None:
    app = SessionMiddleware(bottle_generator_app(models), session)
    assert webtest.TestApp(app).get("/").text == "one;two;"
    assert probe.names() == ["after-first-yield", "before-first-yield"]


def test_bottle_generator_route_commits_its_work_up_to_the_first_yield_even_if_cut(
    session: Any, models: Models, probe: Probe, fake_server: FakeServer
) -> None:
    """Bottle pulls the first chunk before start_response: that work is the decided unit.

    Pinned as documented (docs/deploying/servers.rst): what a Bottle
    generator does before its first ``yield`` is committed with the status,
    before the headers; only what it does after is streamed work, kept only
    for a body read to its end.
    """
    seen = fake_server(SessionMiddleware(bottle_generator_app(models), session), disconnect_after=1)
    assert seen.events[0] == ("start_response", ("200 OK", ["before-first-yield"]))
    assert probe.names() == ["before-first-yield"]


def test_bottle_head_on_a_generator_route_commits_the_work_up_to_the_first_yield(
    session: Any, models: Models, probe: Probe
) -> None:
    """Bottle runs a generator route to its first yield for HEAD, then closes it."""
    app = SessionMiddleware(bottle_generator_app(models), session)
    assert webtest.TestApp(app).head("/").status_int == 200
    assert probe.names() == ["before-first-yield"]


def pyramid_app(models: Models) -> Any:
    from pyramid.config import Configurator
    from pyramid.httpexceptions import HTTPBadRequest
    from pyramid.response import Response

    def create(request: Any) -> Response:
        models.User(name=request.params["name"]).save()
        if request.params.get("fail") == "raise":
            raise LookupError("the view failed")
        if request.params.get("fail") == "400":
            raise HTTPBadRequest()
        return Response("created", status=201)

    with Configurator() as config:
        config.add_route("create", "/users")
        config.add_view(create, route_name="create", request_method="POST")
        return config.make_wsgi_app()


def falcon_app(models: Models) -> Any:
    import falcon

    class Users:
        def on_post(self, req: Any, resp: Any) -> None:
            models.User(name=req.get_param("name")).save()
            if req.get_param("fail") == "raise":
                raise LookupError("the view failed")
            if req.get_param("fail") == "400":
                raise falcon.HTTPBadRequest()
            resp.status = falcon.HTTP_201
            resp.text = "created"

    app = falcon.App()
    app.add_route("/users", Users())
    return app


FRAMEWORKS = [pytest.param(pyramid_app, id="pyramid"), pytest.param(falcon_app, id="falcon")]


@pytest.mark.parametrize("make_app", FRAMEWORKS)
def test_framework_commits_a_201(session: Any, models: Models, probe: Probe, make_app: Any) -> None:
    client = webtest.TestApp(SessionMiddleware(make_app(models), session))
    client.post("/users?name=ann", status=201)
    assert probe.names() == ["ann"]


@pytest.mark.parametrize("make_app", FRAMEWORKS)
def test_framework_rolls_back_a_400(
    session: Any, models: Models, probe: Probe, make_app: Any
) -> None:
    client = webtest.TestApp(SessionMiddleware(make_app(models), session))
    client.post("/users?name=ann&fail=400", status=400)
    assert probe.names() == []


def drive(app: Any, method: str, query: str) -> tuple[str | None, BaseException | None]:
    """Call ``app`` as a server does; the status it got and the exception it logged, if any."""
    environ = create_environ("/users", method=method, query_string=query)
    statuses: list[str] = []
    error: BaseException | None = None
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        b"".join(body)
    finally:
        try:
            getattr(body, "close", lambda: None)()
        except Exception as exc:
            error = exc
    return (statuses[-1] if statuses else None), error


@pytest.mark.parametrize("make_app", FRAMEWORKS)
def test_framework_view_that_raises_answers_500_and_keeps_nothing(
    session: Any, models: Models, probe: Probe, make_app: Any
) -> None:
    status, error = drive(
        SessionMiddleware(make_app(models), session), "POST", "name=ann&fail=raise"
    )
    assert status is not None and status.startswith("500")
    # Pyramid lets the exception reach the middleware, which raises it again from close();
    # Falcon answers 500 itself.
    assert error is None or isinstance(error, LookupError)
    assert probe.names() == []
    assert probe.checked_out() == 0


def file_app(name: str, path: Path) -> Any:
    """Each framework's own way of sending a file, which goes through wsgi.file_wrapper."""
    if name == "flask":
        app = flask.Flask(__name__)
        app.add_url_rule("/file", "file", lambda: flask.send_file(path))
        return app
    if name == "bottle":
        bapp = bottle.Bottle()
        bapp.route("/file", callback=lambda: bottle.static_file(path.name, root=str(path.parent)))
        return bapp
    if name == "pyramid":
        from pyramid.config import Configurator
        from pyramid.response import FileResponse

        with Configurator() as config:
            config.add_route("file", "/file")
            config.add_view(
                lambda request: FileResponse(str(path), request=request), route_name="file"
            )
            return config.make_wsgi_app()
    import falcon

    class Download:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.set_stream(open(path, "rb"), path.stat().st_size)  # noqa: SIM115

    fapp = falcon.App()
    fapp.add_route("/file", Download())
    return fapp


@pytest.mark.parametrize("name", ["flask", "bottle", "pyramid", "falcon"])
def test_framework_file_responses_reach_the_server_as_its_own_file_wrapper(
    session: Any, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "download.bin"
    path.write_bytes(b"x" * 100_000)
    made: list[Any] = []

    class FileWrapper:
        def __init__(self, filelike: Any, block_size: int = 8192) -> None:
            self.filelike = filelike
            made.append(self)

        def __iter__(self) -> Any:
            return iter(lambda: self.filelike.read(8192), b"")

        def close(self) -> None:
            self.filelike.close()

    environ = create_environ("/file")
    environ["wsgi.file_wrapper"] = FileWrapper
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    body = SessionMiddleware(file_app(name, path), session)(environ, start_response)
    assert statuses == ["200 OK"]
    assert isinstance(body, FileWrapper) and made == [body]
    assert b"".join(body) == path.read_bytes()
    body.close()
