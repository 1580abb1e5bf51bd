"""The WASIp2 adapter: `wasi:http/incoming-handler@0.2` and fnhost's queue
handler, over the bindings componentize-py generates (`wit_world`). It is
imported only inside a component; everything it does is turn WIT values
into the SDK's objects and back."""

from __future__ import annotations

import sys
import traceback
from typing import Optional

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams
from wit_world.imports import types as http

from . import _wit_http
from ._app import FunctionApp
from ._http import HttpRequest, HttpResponse
from ._queue import QueueMessage

# `blocking-write-and-flush` takes at most 4096 bytes a call (wasi:io).
_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024

_app: Optional[FunctionApp] = None



def bind(app: FunctionApp) -> None:
    """Makes `app` the one the exports call."""
    global _app
    _app = app




def _read_body(request: http.IncomingRequest) -> bytes:
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(_READ_CHUNK))
            except Err as error:
                if isinstance(error.value, streams.StreamError_Closed):
                    break
                raise
    with http.IncomingBody.finish(body):
        pass
    return b"".join(chunks)


def _request(request: http.IncomingRequest) -> HttpRequest:
    path = request.path_with_query() or "/"
    with request.headers() as fields:
        headers = fields.entries()
    authority = request.authority() or "localhost"
    # The body is read when the function first asks for it (the request
    # resource lives until `handle` returns): most functions never do, and
    # reading costs a handful of WIT calls.
    return HttpRequest(
        method=_wit_http.method_name(http, request.method()),
        url=f"{_wit_http.scheme_name(http, request.scheme())}://{authority}{path}",
        headers=headers,
        body=lambda: _read_body(request),
    )


def _fields(response: HttpResponse) -> http.Fields:
    return http.Fields.from_list(_wit_http.response_fields(response))


def _send(response: HttpResponse, response_out: http.ResponseOutparam) -> None:
    try:
        fields = _fields(response)
    except Err:
        print(f"invalid response headers: {response.headers!r}", file=sys.stderr)
        response = HttpResponse("internal server error\n", status_code=500)
        fields = _fields(response)
    outgoing = http.OutgoingResponse(fields)
    outgoing.set_status_code(response.status_code)
    body = outgoing.body()
    http.ResponseOutparam.set(response_out, Ok(outgoing))
    data = response.get_body()
    try:
        with body.write() as stream:
            for start in range(0, len(data), _WRITE_CHUNK):
                stream.blocking_write_and_flush(data[start : start + _WRITE_CHUNK])
    except Err as error:
        # The client hung up: there is nobody to send the rest to. Ending
        # the call here keeps this interpreter for the next one; letting
        # the error escape would abort it, and a fresh one costs about 6 ms
        # of CPU, paid by every caller that times out.
        if isinstance(error.value, streams.StreamError_Closed):
            return
        raise
    http.OutgoingBody.finish(body, None)


if hasattr(exports, "IncomingHandler"):

    class IncomingHandler(exports.IncomingHandler):
        """`wasi:http/incoming-handler@0.2`: one request, one response."""

        def handle(self, request: http.IncomingRequest, response_out: http.ResponseOutparam) -> None:
            assert _app is not None, "fnhost: no app bound"
            _send(_app.handle(_request(request)), response_out)


if hasattr(exports, "QueueHandler"):
    from wit_world.exports import queue_handler

    class QueueHandler(exports.QueueHandler):
        """`fnhost:function/queue-handler@0.2`: one delivery of a message."""

        def handle(self, message: queue_handler.Message) -> None:
            assert _app is not None, "fnhost: no app bound"
            try:
                _app.handle_queue(
                    QueueMessage(
                        id=message.id,
                        body=message.body,
                        dequeue_count=message.dequeue_count,
                        insertion_time=message.enqueued_at / 1000,
                        attributes=dict(message.attributes),
                    )
                )
            except Exception as error:
                print(f"queue message {message.id} failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                raise Err(f"{type(error).__name__}: {error}")
