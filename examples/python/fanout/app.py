"""`fanout`: `async def` functions, so the app builds as a WASIp3 component
and runs in fnhost's async lane, many calls at once on one interpreter's
event loop. `/sleep` awaits a timer; `/fanout` sends several outbound
requests concurrently; `/spin` is the seed's trap, an `async def` that
never awaits.

    python -m fnhost.build examples/python/fanout/app.py -o fanout.wasm
    fnhost serve fanout.wasm --env FANOUT_URL=http://127.0.0.1:9000/ \\
        --allow-outbound http://127.0.0.1:9000
"""

import asyncio
import os
import time

import fnhost as func
from fnhost import aio

app = func.FunctionApp()


@app.route("sleep")
async def sleep(req: func.HttpRequest) -> str:
    ms = int(req.params.get("ms", "50"))
    await aio.sleep(ms / 1000)
    return f"slept {ms} ms\n"


@app.route("fanout")
async def fanout(req: func.HttpRequest):
    url = os.environ.get("FANOUT_URL")
    if not url:
        return func.HttpResponse("set FANOUT_URL\n", status_code=500)
    count = int(req.params.get("n", "5"))
    started = time.monotonic()
    responses = await asyncio.gather(*(aio.fetch(url) for _ in range(count)))
    return {
        "statuses": [r.status for r in responses],
        "elapsed_ms": round((time.monotonic() - started) * 1000),
    }


@app.route("spin")
async def spin(req: func.HttpRequest) -> str:
    deadline = time.monotonic() + int(req.params.get("ms", "0")) / 1000
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return f"spun {spins} times\n"


@app.route("hello")
async def hello(req: func.HttpRequest) -> str:
    return "hello from an async def\n"
