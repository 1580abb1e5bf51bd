"""The WASIp3 adapter: `wasi:http/handler@0.3` (component-model async), over
the bindings componentize-py generates (`wit_world`). Imported only inside
a component. Each call is a task on the instance's event loop, so several
requests share one interpreter, as `async def` functions share Azure's
event loop."""

from __future__ import annotations

from typing import Optional

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import wasi_http_types as http

# Imported here, at build time, though only `fnhost.aio` uses them:
# componentize-py keeps just the bindings the app imports while it is
# pre-initialised, so a lazy import would find nothing at run time.
from wit_world.imports import client, monotonic_clock  # noqa: F401

from . import _wit_http
from ._app import FunctionApp
from ._http import HttpRequest, HttpResponse

_READ_CHUNK = 64 * 1024

_app: Optional[FunctionApp] = None



def bind(app: FunctionApp) -> None:
    """Makes `app` the one the export calls."""
    global _app
    _app = app





async def read_all(stream) -> bytes:
    """Reads a `stream<u8>` to its end."""
    chunks = []
    with stream:
        while not stream.writer_dropped:
            chunk = await stream.read(_READ_CHUNK)
            if chunk:
                chunks.append(chunk)
    return b"".join(chunks)


def body_and_trailers(data: bytes):
    """A `stream<u8>` that will carry `data` and a trailers future that will
    say "none": the readable ends, and the coroutine that writes them (to be
    spawned, since the caller reads them only after it has the message)."""
    writer, reader = wit_world.byte_stream()
    trailers_writer, trailers_reader = (
        wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
            lambda: Ok(None)
        )
    )

    async def write() -> None:
        with writer:
            await writer.write_all(data)
        await trailers_writer.write(Ok(None))

    return reader, trailers_reader, write()


async def consume_body(message) -> bytes:
    """The whole body of an incoming request or of the response to an
    outbound one (`http.Request` or `http.Response`)."""
    done_writer, done_reader = wit_world.result_unit_wasi_http_types_error_code_future(
        lambda: Ok(None)
    )
    stream, trailers = type(message).consume_body(message, done_reader)
    body = await read_all(stream)
    trailers.__exit__(None, None, None)
    await done_writer.write(Ok(None))
    return body


def _response(response: HttpResponse) -> http.Response:
    fields = http.Fields.from_list(_wit_http.response_fields(response))
    reader, trailers, write = body_and_trailers(response.get_body())
    outgoing, _sent = http.Response.new(fields, reader, trailers)
    outgoing.set_status_code(response.status_code)
    componentize_py_async_support.spawn(write)
    return outgoing


if hasattr(exports, "Handler"):

    class Handler(exports.Handler):
        """`wasi:http/handler@0.3`: one task per request on the instance's loop."""

        async def handle(self, request: http.Request) -> http.Response:
            assert _app is not None, "fnhost: no app bound"
            path = request.get_path_with_query() or "/"
            authority = request.get_authority() or "localhost"
            with request.get_headers() as fields:
                headers = fields.copy_all()
            method = _wit_http.method_name(http, request.get_method())
            # `get_body()` cannot await, so the body is read up front, except
            # for a GET or HEAD that declares none.
            if _wit_http.may_have_body(method, headers):
                body = await consume_body(request)
            else:
                body = b""
            incoming = HttpRequest(
                method=method,
                url=f"{_wit_http.scheme_name(http, request.get_scheme())}://{authority}{path}",
                headers=headers,
                body=body,
            )
            return _response(await _app.handle_async(incoming))
