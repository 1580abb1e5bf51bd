"""What both adapters share: HTTP methods and schemes between their WIT
variants (the same class names in WASIp2's `types` and WASIp3's
`wasi_http_types` bindings) and plain strings."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional

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


def has_body(headers: list[tuple[str, bytes]]) -> bool:
    """Whether a request with these header fields carries a body: HTTP/1.1
    says one without `content-length` or `transfer-encoding` has none, and
    skipping the read saves a handful of WIT calls on every GET."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "transfer-encoding" or (lowered == "content-length" and value.strip() != b"0"):
            return True
    return False


def host_header(headers: list[tuple[str, bytes]]) -> Optional[str]:
    """The value of the Host header field, if there is one."""
    for name, value in headers:
        if name.lower() == "host":
            return value.decode("latin-1")
    return None
