"""What both adapters share: HTTP methods and schemes between their WIT
variants (the same class names in WASIp2's `types` and WASIp3's
`wasi_http_types` bindings) and plain strings."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ._http import HttpResponse

_METHOD_NAMES = ["Get", "Head", "Post", "Put", "Delete", "Connect", "Options", "Trace", "Patch"]


def method_name(http: ModuleType, method: Any) -> str:
    """A WIT `method` as its HTTP name."""
    if isinstance(method, http.Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


def method_value(http: ModuleType, name: str) -> Any:
    """An HTTP method name as its WIT value."""
    for known in _METHOD_NAMES:
        if known.upper() == name.upper():
            return getattr(http, f"Method_{known}")()
    return http.Method_Other(name)


def scheme_name(http: ModuleType, scheme: Optional[Any]) -> str:
    """A WIT `scheme` (or none) as a URL scheme."""
    if isinstance(scheme, http.Scheme_Https):
        return "https"
    if isinstance(scheme, http.Scheme_Other):
        return scheme.value
    return "http"



def may_have_body(method: str, headers: list[tuple[str, bytes]]) -> bool:
    """Whether an incoming request may carry a body. The host's WASI HTTP
    layer strips `transfer-encoding` (and `host`) before the guest sees
    the fields, so a chunked upload shows no sign of its body: only GET and
    HEAD requests without a `content-length` are taken to have none, which
    saves a handful of WIT calls on most reads."""
    if method not in ("GET", "HEAD"):
        return True
    return any(
        name.lower() == "content-length" and value.strip() != b"0" for name, value in headers
    )


def response_fields(response: "HttpResponse") -> list[tuple[str, bytes]]:
    """A response's header fields for WIT, with its exact `content-length`
    (so the host can answer without chunked encoding)."""
    entries = [
        (name, value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() != "content-length"
    ]
    entries.append(("content-length", str(len(response.get_body())).encode()))
    return entries
