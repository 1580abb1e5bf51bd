"""fnhost's Python SDK: write functions as Azure Functions' v2 Python
programming model does, and serve them with fnhost.

    import fnhost as func

    app = func.FunctionApp()

    @app.route("hello")
    def hello(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(f"hello, {req.params.get('name', 'world')}")

A `def` function runs in the sync lane, an `async def` one in the async
lane (decided once, when the app is built). Build a component with
`python -m fnhost.build app.py -o app.wasm`.
"""

from ._app import FunctionApp
from ._http import Headers, HttpRequest, HttpResponse
from ._queue import QueueMessage

__all__ = ["FunctionApp", "Headers", "HttpRequest", "HttpResponse", "QueueMessage"]
