"""`queue`: a queue trigger and an HTTP route in one app (WASIp2, sync lane).

    python -m fnhost.build examples/python/queue/app.py -o queue.wasm
    fnhost serve queue.wasm --queue jobs
    fnhost queue send jobs '{"n": 1}'
"""

import fnhost as func

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="jobs")
def work(msg: func.QueueMessage) -> None:
    job = msg.get_json()
    if job.get("fail"):
        raise ValueError(f"job {msg.id} asks to fail")
    print(f"handled {msg.id} (delivery {msg.dequeue_count}): {job}")


@app.route("health")
def health(req: func.HttpRequest) -> str:
    return "ok\n"
