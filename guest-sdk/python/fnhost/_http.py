"""HTTP request and response objects, shaped like Azure Functions' Python API.

Pure Python: nothing here touches WIT bindings, so it runs (and is tested)
on the machine's CPython as it does inside a component.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Optional, Union
from urllib.parse import parse_qsl, urlsplit


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers; repeated fields are joined with ", "."""

    def __init__(self, fields: Iterable[tuple[str, Union[str, bytes]]] = ()) -> None:
        self._fields: dict[str, tuple[str, str]] = {}
        for name, value in fields:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            key = name.lower()
            if key in self._fields:
                original, previous = self._fields[key]
                self._fields[key] = (original, f"{previous}, {text}")
            else:
                self._fields[key] = (name, text)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()][1]

    def __iter__(self):
        return (original for original, _ in self._fields.values())

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class HttpRequest:
    """An incoming HTTP request: `method`, `url`, `headers`, `params`
    (query string), `route_params` (from the route template), and the body
    through `get_body()` and `get_json()`."""

    def __init__(
        self,
        method: str,
        url: str,
        headers: Union[Headers, Iterable[tuple[str, Union[str, bytes]]]] = (),
        params: Optional[Mapping[str, str]] = None,
        route_params: Optional[Mapping[str, str]] = None,
        body: Union[bytes, Callable[[], bytes]] = b"",
    ) -> None:
        self.method = method.upper()
        self.url = url
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        split = urlsplit(url)
        self.path = split.path or "/"
        if params is None:
            params = dict(parse_qsl(split.query, keep_blank_values=True))
        self.params: dict[str, str] = dict(params)
        self.route_params: dict[str, str] = dict(route_params or {})
        self._body = body

    def get_body(self) -> bytes:
        """The request body, as bytes (read from the host on first use)."""
        if callable(self._body):
            self._body = self._body()
        return self._body

    def get_json(self) -> Any:
        """The request body parsed as JSON; raises `ValueError` if it is not JSON."""
        return json.loads(self.get_body().decode("utf-8"))

    def __repr__(self) -> str:
        return f"<HttpRequest {self.method} {self.url}>"


class HttpResponse:
    """An HTTP response: `body` (str or bytes), `status_code`, `headers`,
    `mimetype` and `charset` (which make the `content-type` header)."""

    def __init__(
        self,
        body: Union[str, bytes, None] = None,
        *,
        status_code: int = 200,
        headers: Optional[Mapping[str, str]] = None,
        mimetype: Optional[str] = None,
        charset: str = "utf-8",
    ) -> None:
        if not 100 <= int(status_code) <= 599:
            raise ValueError(f"status_code {status_code} is not an HTTP status")
        self.status_code = int(status_code)
        self.headers: dict[str, str] = dict(headers or {})
        self.charset = charset
        if isinstance(body, str):
            self._body = body.encode(charset)
            mimetype = mimetype or "text/plain"
        elif body is None:
            self._body = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            self._body = bytes(body)
        else:
            raise TypeError(f"HttpResponse body must be str or bytes, not {type(body).__name__}")
        self.mimetype = mimetype
        if mimetype and not any(k.lower() == "content-type" for k in self.headers):
            text_like = mimetype.startswith("text/") or mimetype == "application/json"
            self.headers["content-type"] = (
                f"{mimetype}; charset={charset}" if text_like else mimetype
            )

    def get_body(self) -> bytes:
        """The response body, as bytes."""
        return self._body

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status_code}, {len(self._body)} bytes>"


def to_response(value: Any) -> HttpResponse:
    """What a handler returned, as a response: an `HttpResponse` as it is,
    `str` as text/plain, `bytes` as application/octet-stream, a `dict` or
    `list` as JSON, `None` as an empty 204, and `(body, status)` as that
    body with that status."""
    if isinstance(value, HttpResponse):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        response = to_response(value[0])
        # Through the constructor, so the status is checked here, inside the
        # function's error handling, not later in the adapter.
        return HttpResponse(
            response.get_body(),
            status_code=value[1],
            headers=response.headers,
            mimetype=response.mimetype,
            charset=response.charset,
        )
    if value is None:
        return HttpResponse(status_code=204)
    if isinstance(value, str):
        return HttpResponse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return HttpResponse(bytes(value), mimetype="application/octet-stream")
    if isinstance(value, (dict, list)):
        return HttpResponse(json.dumps(value), mimetype="application/json")
    raise TypeError(
        f"a handler returned {type(value).__name__}; return an HttpResponse, str, bytes, dict, list or None"
    )
