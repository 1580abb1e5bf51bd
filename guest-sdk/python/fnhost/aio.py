"""What an `async def` function awaits: timers and outbound HTTP, on the
host's event loop (WASIp3). Use these rather than `asyncio.sleep` (whose
timer componentize-py's event loop does not implement) or a blocking
HTTP library. They work only inside a component built by `fnhost.build`
from an app with an `async def` function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlsplit

from ._http import Headers


@dataclass
class FetchResponse:
    """The answer to an outbound request: `status`, `headers`, `body`."""

    status: int
    headers: Headers
    body: bytes


async def sleep(seconds: float) -> None:
    """Waits `seconds` on the host's clock without holding the instance."""
    from ._wasi_p3 import monotonic_clock

    await monotonic_clock.wait_for(max(0, int(seconds * 1_000_000_000)))


async def fetch(
    url: str,
    method: str = "GET",
    headers: Optional[Mapping[str, str]] = None,
    body: bytes = b"",
) -> FetchResponse:
    """Sends an HTTP request and returns the whole response. The host must
    allow the URL's origin (`fnhost serve --allow-outbound ORIGIN`);
    otherwise this raises."""
    import componentize_py_async_support

    from . import _wasi_p3, _wit_http
    from ._wasi_p3 import client, http

    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise ValueError(f"fetch needs an absolute http(s) URL, not {url!r}")
    fields = http.Fields.from_list(
        [(name, value.encode("latin-1")) for name, value in (headers or {}).items()]
    )
    contents, trailers, write = _wasi_p3.body_and_trailers(body)
    request, _sent = http.Request.new(fields, contents, trailers, None)
    request.set_method(_wit_http.method_value(http, method))
    request.set_scheme(http.Scheme_Https() if split.scheme == "https" else http.Scheme_Http())
    request.set_authority(split.netloc)
    request.set_path_with_query((split.path or "/") + (f"?{split.query}" if split.query else ""))
    componentize_py_async_support.spawn(write)
    response = await client.send(request)
    status = response.get_status_code()
    with response.get_headers() as response_fields:
        response_headers = Headers(response_fields.copy_all())
    return FetchResponse(status, response_headers, await _wasi_p3.consume_body(response))
