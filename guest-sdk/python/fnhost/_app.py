"""The app object: decorators collect the functions when the module is
imported (which componentize-py does once, at build time), and the
adapter calls `handle`, `handle_async` or `handle_queue` per invocation."""

from __future__ import annotations

import inspect
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from ._http import HttpRequest, HttpResponse, to_response
from ._queue import QueueMessage
from ._routing import RouteTemplate

Handler = Callable[..., Any]


@dataclass
class Route:
    """One HTTP function: its template, its methods (empty: any) and handler."""

    template: RouteTemplate
    methods: frozenset[str]
    handler: Handler
    name: str

    @property
    def is_async(self) -> bool:
        """Whether the handler is an `async def`."""
        return inspect.iscoroutinefunction(self.handler)


@dataclass
class QueueTrigger:
    """One queue function and the queue it is bound to (the host binds the
    queue with `fnhost serve --queue NAME`; the name here documents it)."""

    queue_name: str
    handler: Handler
    name: str


@dataclass
class FunctionApp:
    """A function app: HTTP routes and a queue trigger, registered with
    decorators, as in Azure Functions' v2 Python programming model.

    `route_prefix` is put before every route (Azure's default is "api";
    fnhost's is none, so `@app.route("hello")` serves `/hello`)."""

    route_prefix: str = ""
    routes: list[Route] = field(default_factory=list)
    queue_triggers: list[QueueTrigger] = field(default_factory=list)

    def route(
        self,
        route: Optional[str] = None,
        methods: Optional[Iterable[str]] = None,
        auth_level: Any = None,
    ) -> Callable[[Handler], Handler]:
        """Registers an HTTP function for `route` (default: the function's
        name) and `methods` (default: any). `auth_level` is accepted for
        compatibility and ignored: fnhost leaves authentication to the
        edge in front of it."""

        def register(handler: Handler) -> Handler:
            template = "/".join(
                part.strip("/") for part in (self.route_prefix, route or handler.__name__) if part
            )
            self.routes.append(
                Route(
                    template=RouteTemplate(template),
                    methods=frozenset(m.upper() for m in (methods or ())),
                    handler=handler,
                    name=handler.__name__,
                )
            )
            return handler

        return register

    def queue_trigger(
        self, arg_name: str = "msg", queue_name: str = "", connection: Optional[str] = None
    ) -> Callable[[Handler], Handler]:
        """Registers the app's queue function. The host binds the queue
        (`fnhost serve --queue NAME`); `arg_name`, `queue_name` and
        `connection` are accepted for compatibility."""

        def register(handler: Handler) -> Handler:
            if self.queue_triggers:
                raise ValueError(
                    f"{handler.__name__}: an app has one queue trigger (already: "
                    f"{self.queue_triggers[0].name}); the host binds one queue per component"
                )
            if inspect.iscoroutinefunction(handler):
                raise TypeError(
                    f"{handler.__name__}: a queue trigger must be a plain `def` in this version"
                )
            self.queue_triggers.append(QueueTrigger(queue_name, handler, handler.__name__))
            return handler

        return register

    @property
    def is_async(self) -> bool:
        """Whether any HTTP function is an `async def`: then the app is
        built as a WASIp3 component and runs in the async lane; otherwise
        as a WASIp2 component in the sync lane."""
        return any(route.is_async for route in self.routes)

    def find(self, method: str, path: str) -> tuple[Optional[Route], dict[str, str], int]:
        """The route for `method` and `path`, its parameters, and the status
        to answer with when there is none (404, or 405 when only the method
        is wrong)."""
        wrong_method = False
        for candidate in self.routes:
            params = candidate.template.match(path)
            if params is None:
                continue
            if candidate.methods and method.upper() not in candidate.methods:
                wrong_method = True
                continue
            return candidate, params, 200
        return None, {}, 405 if wrong_method else 404

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Runs the function for `request` (a `def`, or an `async def` run
        to completion) and turns what it returned, or raised, into a
        response."""
        found, early = self._resolve(request)
        if found is None:
            return early
        try:
            result = found.handler(request)
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError(f"{found.name} is an async def; call handle_async")
            return to_response(result)
        except Exception:
            return _internal_error(found.name)

    async def handle_async(self, request: HttpRequest) -> HttpResponse:
        """Like `handle`, awaiting an `async def` function (a plain `def`
        one runs on the event loop, so keep it short)."""
        found, early = self._resolve(request)
        if found is None:
            return early
        try:
            result = found.handler(request)
            if inspect.isawaitable(result):
                result = await result
            return to_response(result)
        except Exception:
            return _internal_error(found.name)

    def handle_queue(self, message: QueueMessage) -> None:
        """Runs the queue function; an exception fails the delivery (the
        message is delivered again, or poisoned after the last attempt)."""
        if not self.queue_triggers:
            raise RuntimeError("this app has no queue trigger")
        self.queue_triggers[0].handler(message)

    def _resolve(self, request: HttpRequest) -> tuple[Optional[Route], HttpResponse]:
        found, params, status = self.find(request.method, request.path)
        if found is None:
            text = "method not allowed\n" if status == 405 else "not found\n"
            return None, HttpResponse(text, status_code=status)
        request.route_params = params
        return found, HttpResponse()


def _internal_error(name: str) -> HttpResponse:
    """The traceback goes to stderr (the host's log, with the invocation
    id); the client gets a plain 500."""
    print(f"function {name} raised:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    return HttpResponse("internal server error\n", status_code=500)


def find_app(namespace: dict[str, Any]) -> FunctionApp:
    """The one `FunctionApp` among a module's globals."""
    apps = [value for value in namespace.values() if isinstance(value, FunctionApp)]
    if len(apps) != 1:
        raise LookupError(
            f"the module must define exactly one FunctionApp at top level (found {len(apps)})"
        )
    return apps[0]
