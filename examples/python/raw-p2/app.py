"""A handler written straight against componentize-py's bindings, without
the SDK, as a new user would for `wasmtime serve`:

    componentize-py -d wit -w app componentize app -o app.wasm

where wit/ holds the WASI 0.2.12 packages (guest-sdk/python/fnhost/wit/p2)
and a world that includes `wasi:http/proxy@0.2.12`.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"hello from python\n")
        OutgoingBody.finish(body, None)
