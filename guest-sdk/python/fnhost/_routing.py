"""Route templates, as Azure Functions writes them: `hello`,
`products/{category}/{id}`, `files/{*path}` (the rest of the path), with
`{name?}` for an optional last segment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Segment:
    """One segment of a template: literal text, or a named parameter."""

    text: str
    parameter: bool = False
    optional: bool = False
    rest: bool = False


class RouteTemplate:
    """A parsed route template; `match(path)` gives its parameters or None."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.segments: list[Segment] = []
        parts = [p for p in template.strip("/").split("/") if p]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                rest = name.startswith("*")
                optional = name.endswith("?")
                name = name.lstrip("*").rstrip("?")
                if not name.isidentifier():
                    raise ValueError(f"route {template!r}: {part!r} is not a parameter name")
                if (rest or optional) and not last:
                    raise ValueError(
                        f"route {template!r}: {part!r} may only be the last segment"
                    )
                self.segments.append(Segment(name, True, optional, rest))
            elif "{" in part or "}" in part:
                raise ValueError(f"route {template!r}: a parameter must be a whole segment")
            else:
                self.segments.append(Segment(part))

    def match(self, path: str) -> Optional[dict[str, str]]:
        """The route parameters if `path` matches this template, else None."""
        parts = [p for p in path.strip("/").split("/") if p]
        params: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.rest:
                params[segment.text] = "/".join(parts[index:])
                return params
            if index >= len(parts):
                if segment.optional:
                    return params
                return None
            if segment.parameter:
                params[segment.text] = parts[index]
            elif parts[index].lower() != segment.text.lower():
                return None
        return params if len(parts) == len(self.segments) else None
