"""`hello`: plain `def` functions, so the app builds as a WASIp2 component
and runs in fnhost's sync lane, one call per warm instance per thread.

    python -m fnhost.build examples/python/hello/app.py -o hello.wasm
    fnhost serve hello.wasm
    curl 'http://127.0.0.1:8080/hello?name=you'
"""

import fnhost as func

app = func.FunctionApp()

# Module state lives as long as the instance: with instance reuse it counts
# the calls this instance served.
calls = 0


@app.route("hello")
def hello(req: func.HttpRequest) -> func.HttpResponse:
    global calls
    calls += 1
    name = req.params.get("name", "world")
    return func.HttpResponse(f"hello, {name}\n")


@app.route("calls")
def count_calls(req: func.HttpRequest) -> str:
    """How many calls this instance has served, this one included."""
    global calls
    calls += 1
    return f"{calls}\n"


@app.route("items/{id}", methods=["GET"])
def item(req: func.HttpRequest):
    return {"id": req.route_params["id"], "method": req.method}


@app.route("echo", methods=["POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    try:
        payload = req.get_json()
    except ValueError:
        return func.HttpResponse("expected a JSON body\n", status_code=400)
    return func.HttpResponse(
        body=__import__("json").dumps({"you_sent": payload, "length": len(req.get_body())}),
        mimetype="application/json",
        headers={"x-echo": "yes"},
    )


@app.route("fail")
def fail(req: func.HttpRequest) -> str:
    raise RuntimeError("this function fails on purpose")


@app.route("spin")
def spin(req: func.HttpRequest) -> str:
    """Burns CPU for ?ms= milliseconds without waiting (the sync lane gives
    it a thread; others keep their own)."""
    import time

    deadline = time.monotonic() + int(req.params.get("ms", "0")) / 1000
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return f"spun {spins} times\n"
