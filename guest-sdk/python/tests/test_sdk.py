"""Unit tests of the SDK's pure-Python core: routing, requests, responses,
the app's dispatch, and the builder's decisions. They run on this
machine's CPython in a second; the adapters are tested end to end through
the real host (tests/e2e/python.rs)."""

import asyncio
import filecmp
import json
from pathlib import Path

import pytest

import fnhost as func
from fnhost import build
from fnhost._routing import RouteTemplate

REPO = Path(__file__).resolve().parents[3]


def request(method: str, url: str, body: bytes = b"", headers=()) -> func.HttpRequest:
    return func.HttpRequest(method, url, headers=headers, body=body)


def test_route_templates_match_literals_parameters_optional_and_rest():
    assert RouteTemplate("hello").match("/hello") == {}
    assert RouteTemplate("hello").match("/HELLO/") == {}
    assert RouteTemplate("hello").match("/hello/there") is None
    assert RouteTemplate("products/{category}/{id}").match("/products/tea/7") == {
        "category": "tea",
        "id": "7",
    }
    assert RouteTemplate("products/{id?}").match("/products") == {}
    assert RouteTemplate("products/{id?}").match("/products/3") == {"id": "3"}
    assert RouteTemplate("files/{*path}").match("/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert RouteTemplate("").match("/") == {}


@pytest.mark.parametrize("template", ["a/{*rest}/b", "{x?}/y", "a{b}", "{not-a-name}"])
def test_bad_route_templates_are_refused_when_registered(template):
    with pytest.raises(ValueError):
        RouteTemplate(template)


def test_request_exposes_method_url_params_headers_and_body():
    req = request(
        "post",
        "http://localhost/echo?name=you&empty=",
        body=b'{"a": 1}',
        headers=[("Content-Type", b"application/json"), ("X-Many", b"1"), ("x-many", b"2")],
    )
    assert req.method == "POST"
    assert req.path == "/echo"
    assert req.params == {"name": "you", "empty": ""}
    assert req.headers["content-type"] == "application/json"
    assert req.headers["X-MANY"] == "1, 2"
    assert req.get_json() == {"a": 1}
    with pytest.raises(ValueError):
        request("GET", "http://h/", body=b"not json").get_json()


def test_returned_values_become_responses():
    app = func.FunctionApp()

    @app.route("text")
    def text(req):
        return "hi"

    @app.route("data")
    def data(req):
        return {"ok": True}

    @app.route("raw")
    def raw(req):
        return b"\x00\x01"

    @app.route("nothing")
    def nothing(req):
        return None

    @app.route("created")
    def created(req):
        return "made", 201

    def get(path):
        return app.handle(request("GET", f"http://h{path}"))

    assert (get("/text").status_code, get("/text").get_body()) == (200, b"hi")
    assert get("/text").headers["content-type"] == "text/plain; charset=utf-8"
    assert json.loads(get("/data").get_body()) == {"ok": True}
    assert get("/data").headers["content-type"] == "application/json; charset=utf-8"
    assert get("/raw").headers["content-type"] == "application/octet-stream"
    assert get("/nothing").status_code == 204
    assert get("/created").status_code == 201


def test_unknown_paths_are_404_and_wrong_methods_405():
    app = func.FunctionApp()

    @app.route("only-post", methods=["POST"])
    def only_post(req):
        return "posted"

    assert app.handle(request("GET", "http://h/nowhere")).status_code == 404
    assert app.handle(request("GET", "http://h/only-post")).status_code == 405
    assert app.handle(request("POST", "http://h/only-post")).get_body() == b"posted"


def test_an_exception_is_a_plain_500_and_its_traceback_goes_to_stderr(capsys):
    app = func.FunctionApp()

    @app.route("boom")
    def boom(req):
        raise RuntimeError("secret detail")

    response = app.handle(request("GET", "http://h/boom"))
    assert response.status_code == 500
    assert b"secret" not in response.get_body()
    assert "secret detail" in capsys.readouterr().err


def test_route_params_and_the_route_prefix():
    app = func.FunctionApp(route_prefix="api")

    @app.route("items/{id}")
    def item(req):
        return req.route_params["id"]

    assert app.handle(request("GET", "http://h/api/items/42")).get_body() == b"42"
    assert app.handle(request("GET", "http://h/items/42")).status_code == 404


def test_async_functions_run_through_handle_async_and_decide_the_lane():
    app = func.FunctionApp()

    @app.route("sync")
    def plain(req):
        return "plain"

    assert not app.is_async
    assert build.plan_for(app) == build.Plan(wasip3=False, http=True, queue=False)

    @app.route("async")
    async def awaited(req):
        await asyncio.sleep(0)
        return "awaited"

    assert app.is_async
    assert build.plan_for(app).wasip3
    run = asyncio.run
    assert run(app.handle_async(request("GET", "http://h/async"))).get_body() == b"awaited"
    assert run(app.handle_async(request("GET", "http://h/sync"))).get_body() == b"plain"
    assert app.handle(request("GET", "http://h/async")).status_code == 500


def test_one_queue_trigger_a_plain_def():
    app = func.FunctionApp()
    seen = []

    @app.queue_trigger(arg_name="msg", queue_name="jobs")
    def work(msg: func.QueueMessage):
        seen.append((msg.id, msg.get_json(), msg.dequeue_count))

    app.handle_queue(func.QueueMessage("m1", b'{"n": 1}', dequeue_count=2))
    assert seen == [("m1", {"n": 1}, 2)]
    assert build.plan_for(app) == build.Plan(wasip3=False, http=False, queue=True)
    with pytest.raises(ValueError):
        app.queue_trigger()(lambda msg: None)


def test_an_async_queue_trigger_is_refused():
    app = func.FunctionApp()
    with pytest.raises(TypeError):

        @app.queue_trigger()
        async def work(msg):
            pass


def test_an_app_without_functions_does_not_build():
    with pytest.raises(build.BuildError):
        build.plan_for(func.FunctionApp())


def test_worlds_name_the_exports_the_host_serves():
    assert "include wasi:http/proxy@0.2.12;" in build.Plan(False, True, False).world()
    assert "include wasi:http/service@0.3.0;" in build.Plan(True, True, True).world()
    assert "export fnhost:function/queue-handler@0.2.0;" in build.Plan(False, True, True).world()


def test_the_lane_marker_is_a_well_formed_custom_section():
    section = build.custom_section("fnhost:lane", b"sync")
    assert section[0] == 0
    assert section[1] == len(section) - 2
    assert section[2] == len("fnhost:lane")
    assert section.endswith(b"fnhost:lane" + b"sync")


def test_the_packaged_queue_wit_is_the_repository_contract():
    assert filecmp.cmp(
        REPO / "wit" / "queue.wit", REPO / "guest-sdk" / "python" / "fnhost" / "wit" / "queue.wit",
        shallow=False,
    )


def test_wit_methods_and_schemes_map_to_plain_strings():
    from types import SimpleNamespace

    from fnhost import _wit_http

    def variant(name, with_value=False):
        def init(self, value=None):
            self.value = value

        return type(name, (), {"__init__": init})

    names = ["Get", "Head", "Post", "Put", "Delete", "Connect", "Options", "Trace", "Patch", "Other"]
    http = SimpleNamespace(**{f"Method_{n}": variant(f"Method_{n}") for n in names})
    http.Scheme_Http, http.Scheme_Https, http.Scheme_Other = (
        variant("Scheme_Http"), variant("Scheme_Https"), variant("Scheme_Other"))
    assert _wit_http.method_name(http, http.Method_Patch()) == "PATCH"
    assert _wit_http.method_name(http, http.Method_Other("PURGE")) == "PURGE"
    assert isinstance(_wit_http.method_value(http, "delete"), http.Method_Delete)
    assert _wit_http.method_value(http, "PURGE").value == "PURGE"
    assert _wit_http.scheme_name(http, None) == "http"
    assert _wit_http.scheme_name(http, http.Scheme_Https()) == "https"


def test_only_get_and_head_without_a_length_count_as_bodiless():
    from fnhost._wit_http import may_have_body

    assert not may_have_body("GET", [("accept", b"*/*")])
    assert not may_have_body("HEAD", [("Content-Length", b"0")])
    assert may_have_body("GET", [("Content-Length", b"12")])
    # transfer-encoding never reaches the guest: a POST may always have one.
    assert may_have_body("POST", [])


def test_a_lazy_body_is_read_once_on_first_use():
    reads = []

    def read():
        reads.append(1)
        return b'{"a": 2}'

    req = func.HttpRequest("POST", "http://h/x", body=read)
    assert reads == []
    assert req.get_json() == {"a": 2}
    assert req.get_body() == b'{"a": 2}'
    assert reads == [1]


def test_a_bad_status_in_a_returned_tuple_is_a_500_not_a_trap(capsys):
    app = func.FunctionApp()

    @app.route("odd")
    def odd(req):
        return "x", 999

    assert app.handle(request("GET", "http://h/odd")).status_code == 500


def test_response_fields_carry_the_exact_length_once():
    from fnhost._wit_http import response_fields

    response = func.HttpResponse("héllo", headers={"Content-Length": "999", "x-a": "1"})
    fields = response_fields(response)
    assert ("content-length", b"6") in fields
    assert not any(name == "Content-Length" for name, _ in fields)
    assert ("x-a", b"1") in fields
