"""A queue message, shaped like Azure Functions' `QueueMessage`."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional


class QueueMessage:
    """One delivery of a queue message: `id`, `dequeue_count`,
    `insertion_time` (seconds since the epoch, when it was enqueued),
    `attributes`, and the body through `get_body()` and `get_json()`."""

    def __init__(
        self,
        id: str,
        body: bytes,
        dequeue_count: int = 1,
        insertion_time: Optional[float] = None,
        attributes: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.id = id
        self._body = body
        self.dequeue_count = dequeue_count
        self.insertion_time = insertion_time
        self.attributes: dict[str, str] = dict(attributes or {})

    def get_body(self) -> bytes:
        """The message body, as bytes."""
        return self._body

    def get_json(self) -> Any:
        """The body parsed as JSON; raises `ValueError` if it is not JSON."""
        return json.loads(self._body.decode("utf-8"))

    def __repr__(self) -> str:
        return f"<QueueMessage {self.id} (delivery {self.dequeue_count})>"
