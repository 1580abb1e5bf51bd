"""An `async def` handler written straight against componentize-py's
WASIp3 bindings, without the SDK:

    componentize-py -d wit -w app componentize app -o app.wasm

where wit/ holds the WASI 0.3.0 packages (guest-sdk/python/fnhost/wit/p3)
and a world that includes `wasi:http/service@0.3.0`. `?ms=` waits that
long on the host's clock before answering.
"""

from urllib.parse import parse_qs, urlsplit

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        query = parse_qs(urlsplit(request.get_path_with_query() or "/").query)
        ms = int(query.get("ms", ["0"])[0])
        if ms:
            await monotonic_clock.wait_for(ms * 1_000_000)
        body = f"hello from async python after {ms} ms\n".encode()
        writer, reader = wit_world.byte_stream()
        trailers_writer, trailers_reader = (
            wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
                lambda: Ok(None)
            )
        )
        response, _ = Response.new(
            Fields.from_list([("content-type", b"text/plain")]), reader, trailers_reader
        )

        async def send_body() -> None:
            with writer:
                await writer.write_all(body)
            await trailers_writer.write(Ok(None))

        componentize_py_async_support.spawn(send_body())
        return response
