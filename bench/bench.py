#!/usr/bin/env python3
"""fnhost's load benchmark: the same guests on fnhost, on `wasmtime serve` 48
(with its defaults and with tuned flags) and on a native hyper server, side by
side in one run, servers alternating (A B C D, A B C D, ...).

    bench/bench.py                 # every scenario, every server, 3 rounds
    bench/bench.py --quick         # one short round against fnhost alone (smoke check)
    bench/bench.py --rounds 5 --scenarios hello,io

It installs what it needs on a fresh machine: `wrk` from Debian, and
wasmtime-cli 48.0.8 from crates.io into bench/.cache (or give WASMTIME=/path).
Results: printed, and written to bench/results/latest.md and latest.json.
Loopback only; every server it starts is stopped by PID; every loop is bounded.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
WASMTIME_VERSION = "48.0.8"
# The host's and the examples' target folders; CI keeps both outside the clone.
HOST_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
EXAMPLES_TARGET = Path(os.environ.get("FNHOST_EXAMPLES_TARGET_DIR") or ROOT / "examples" / "target")
EXAMPLES = EXAMPLES_TARGET / "wasm32-wasip2" / "release"
# Python guests (componentize-py): bench name -> examples/python folder.
# `py-hello` and `py-async` are SDK apps (a `def` app, sync lane; an
# `async def` app, WASIp3); `py-raw` is a handler written without the SDK
# (no lane marker), as a user would write it for `wasmtime serve`.
PYTHON_GUESTS = {"py-hello": "hello", "py-async": "fanout", "py-raw": "raw-p2"}
PYTHON_P3_GUESTS = {"py-async"}
# JavaScript guests (componentize-js, through examples/js/build.py): bench
# name -> examples/js folder. A fetch-event handler, no lane marker.
JS_GUESTS = {"js-hello": "hello"}
TOOLCHAIN_COMPONENTS = Path(os.environ.get("FNHOST_GUEST_BUILD_DIR")
                            or ROOT / "bench" / ".cache" / "guests")


def guest_wasm(guest):
    """The component file of a bench guest."""
    if guest in PYTHON_GUESTS or guest in JS_GUESTS:
        return TOOLCHAIN_COMPONENTS / f"bench-{guest}.wasm"
    return EXAMPLES / f"{guest}.wasm"


def build_toolchain_guests(scenarios):
    """Builds the Python guests with componentize-py and the JavaScript ones
    with componentize-js (15-20 s each), for the scenarios that use them."""
    TOOLCHAIN_COMPONENTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "guest-sdk" / "python"))
    if PYTHON_SCENARIOS & set(scenarios):
        for guest, folder in PYTHON_GUESTS.items():
            source = ROOT / "examples" / "python" / folder
            out = str(guest_wasm(guest))
            if folder.startswith("raw-"):
                run(["componentize-py", "-d", "wit", "-w", "app", "componentize", "app", "-o", out],
                    cwd=source)
            else:
                run([sys.executable, "-m", "fnhost.build", str(source / "app.py"), "-o", out],
                    env=env)
    if JS_SCENARIOS & set(scenarios):
        for guest, folder in JS_GUESTS.items():
            run([sys.executable, str(ROOT / "examples" / "js" / "build.py"), folder,
                 "-o", str(guest_wasm(guest))])

# Little's law bound of the io scenario: 500 connections / 50 ms each.
IO_CONNECTIONS = 500
IO_WAIT_MS = 50
IO_LIMIT = IO_CONNECTIONS * 1000 / IO_WAIT_MS

START_TIMEOUT_S = 60
HOG_MS = 3000


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run(cmd, check=True, **kwargs)


def clean_env():
    """The servers' environment: RUST_BACKTRACE unset (it slows wasmtime's error paths)."""
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)
    env.pop("RUST_LOG", None)
    return env


# ---------------------------------------------------------------- setup


def ensure_wrk():
    if shutil.which("wrk"):
        return
    log("wrk not found: installing it from Debian")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "wrk"])


def ensure_wasmtime():
    explicit = os.environ.get("WASMTIME")
    if explicit:
        return explicit
    root = CACHE / f"wasmtime-{WASMTIME_VERSION}"
    binary = root / "bin" / "wasmtime"
    if not binary.exists():
        log(f"installing wasmtime-cli {WASMTIME_VERSION} into {root} (takes a while, once)")
        run(["cargo", "install", "wasmtime-cli", "--version", WASMTIME_VERSION,
             "--locked", "--root", str(root)])
    return str(binary)


def build(profile, host=True):
    """Builds the servers (unless `host` is False: then they must exist) and the guests."""
    flag = ["--release"] if profile == "release" else []
    if host:
        run(["cargo", "build", *flag, "-p", "fnhost", "-p", "fnhost-bench-native"], cwd=ROOT)
    run(["cargo", "build", "--release", "--target", "wasm32-wasip2",
         "--manifest-path", str(ROOT / "examples" / "Cargo.toml"),
         "--target-dir", str(EXAMPLES_TARGET)])
    target = HOST_TARGET / ("release" if profile == "release" else "debug")
    fnhost = target / "fnhost"
    if not fnhost.exists():
        sys.exit(f"{fnhost} does not exist; build it or drop --no-build")
    return fnhost, target / "fnhost-bench-native"


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))


# ---------------------------------------------------------------- servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process on a loopback port, stopped by PID."""

    def __init__(self, kind, argv, port, pin=None):
        self.kind, self.port = kind, port
        if pin is not None:
            argv = ["taskset", "-c", str(pin), *argv]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr_lines = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            if len(self.stderr_lines) < 1000:
                self.stderr_lines.append(line.rstrip())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, path):
        """Seconds from spawn to the first 200 on `path`."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {' | '.join(self.stderr_lines[-5:])}")
            try:
                with urllib.request.urlopen(self.url(path), timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                time.sleep(0.001)
        raise RuntimeError(f"{self.kind} not ready within {START_TIMEOUT_S}s")

    def peak_rss_kib(self):
        """Peak RSS of the server and its child processes (fnhost's workers), summed."""
        total, pending = 0, [self.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, AttributeError, ValueError):
                continue
        return total or None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ServerKind:
    """How to start one kind of server for a guest."""

    def __init__(self, name, start, path, only=None):
        self.name = name
        self._start = start  # (guest, port, extra) -> argv
        self._path = path  # (guest) -> URL path prefix
        self.only = only  # scenarios this server takes part in (None: all)

    def runs(self, scenario):
        return self.only is None or scenario in self.only

    def start(self, guest, pin=None, extra=None):
        port = free_port()
        server = Server(self.name, self._start(guest, port, extra or {}), port, pin)
        server.wait_ready(self.path(guest, ready=True))
        return server

    def path(self, guest, ready=False):
        return self._path(guest, ready)


def server_kinds(fnhost, native, wasmtime, quick):
    fnhost_cache = CACHE / "fnhost-compile-cache"

    def fnhost_argv(guest, port, extra, mode=None, workers=None, in_process=False,
                    forwarding=False):
        argv = [str(fnhost), "serve", "--listen", f"127.0.0.1:{port}", "--timeout", "60s",
                "--cache-dir", str(extra.get("cache_dir", fnhost_cache))]
        if forwarding:
            argv += ["--connection-handoff", "off"]
        if mode:
            argv += ["--mode", mode]
        if workers:
            argv += ["--workers", str(workers)]
        if in_process:
            argv += ["--in-process"]
        if "threads" in extra:
            argv += ["--threads", str(extra["threads"])]
        if "queue" in extra:
            argv += ["--queue", extra["queue"], "--data-dir", extra["data_dir"]]
        return [*argv, str(guest_wasm(guest))]

    def fnhost_app_argv(guest, port, extra):
        # The guest as one function of a three-function app: it takes
        # exactly `/`, beside a sleep and a cpu function on their own routes.
        manifest = Path(tempfile.mkdtemp(prefix="fnhost-bench-app-")) / "fnhost.toml"
        functions = [(guest, "/"), ("sleep", "/sleep"), ("cpu", "/cpu")]
        manifest.write_text("manifest_version = 1\n" + "".join(
            f'\n[[function]]\nname = "f{i}"\ncomponent = "{guest_wasm(name)}"\nroute = "{route}"\n'
            for i, (name, route) in enumerate(functions)))
        argv = fnhost_argv(guest, port, extra)
        return [*argv[:-1], str(manifest)]

    def fnhost_async_argv(guest, port, extra):
        return fnhost_argv(guest, port, extra, mode="async")

    def fnhost_sync_argv(guest, port, extra):
        return fnhost_argv(guest, port, extra, mode="sync")

    def fnhost_in_process_argv(guest, port, extra):
        return fnhost_argv(guest, port, extra, in_process=True)

    def fnhost_forwarding_argv(guest, port, extra):
        return fnhost_argv(guest, port, extra, forwarding=True)

    def fnhost_workers_argv(workers):
        return lambda guest, port, extra: fnhost_argv(guest, port, extra, workers=workers)

    def wasm_path(guest, ready):
        if guest == "py-hello":
            return "/hello"
        if guest == "py-async":
            return "/sleep?ms=1" if ready else "/sleep"
        return "/?ms=0" if guest == "hog" else ("/?ms=1" if guest == "sleep" and ready else "/")

    def native_path(guest, ready):
        return {"hello": "/", "plain_hello": "/", "cpu": "/cpu",
                "sleep": "/sleep?ms=1" if ready else "/sleep", "hog": "/hog?ms=0"}[guest]

    # fnhost runs each guest in the lane its marker asks for (hello and cpu:
    # sync; sleep and hog: async); "fnhost-async" forces the async lane where
    # that differs, which also measures the cost of fuel metering on cpu.
    # "fnhost" is the default: a supervisor and one worker process. The
    # worker-count kinds and "fnhost-in-process" (guests in the serving
    # process) measure what the process boundary costs and what more
    # workers buy.
    worker_scenarios = {"hello", "cpu", "cpu-1-thread"}
    queue_scenarios = {"queue-embedded", "queue-redis"}
    kinds = [
        ServerKind("fnhost", fnhost_argv, wasm_path,
                   only=set(SCENARIOS)),
        ServerKind("fnhost-in-process", fnhost_in_process_argv, wasm_path,
                   only=worker_scenarios | TOOLCHAIN_SCENARIOS
                   | {"hello-pinned", "io", "fairness", "plain-hello",
                      "cold-start-cold-cache", "cold-start-warm-cache"}),
        ServerKind("fnhost-2-workers", fnhost_workers_argv(2), wasm_path,
                   only=worker_scenarios | queue_scenarios),
        # The default worker with every request forwarded over its channel
        # (how fnhost served before connections were handed to workers).
        ServerKind("fnhost-forwarding", fnhost_forwarding_argv, wasm_path,
                   only=worker_scenarios | TOOLCHAIN_SCENARIOS | {"io", "plain-hello"}),
        ServerKind("fnhost-app", fnhost_app_argv, wasm_path, only={"hello", "hello-pinned"}),
    ]
    if quick:
        return kinds
    kinds += [
        ServerKind("fnhost-4-workers", fnhost_workers_argv(4), wasm_path, only=worker_scenarios),
        ServerKind("fnhost-async", fnhost_async_argv, wasm_path,
                   only={"hello-pinned", "hello", "cpu"}),
        # An unmarked WASIp2 guest forced into the sync lane (no fuel
        # metering, a thread per call): what the async lane's yield points
        # cost a guest that never waits.
        ServerKind("fnhost-sync", fnhost_sync_argv, wasm_path,
                   only={"python-raw-hello", "plain-hello", "js-hello"}),
    ]

    def wasmtime_features(guest):
        # WASIp3 guests need wasmtime's p3 support and component-model async.
        if guest in PYTHON_P3_GUESTS:
            return ["-S", "cli,p3", "-W", "component-model-async"]
        return ["-S", "cli"]

    def wasmtime_default(guest, port, extra):
        return [wasmtime, "serve", *wasmtime_features(guest), "--addr", f"127.0.0.1:{port}",
                str(guest_wasm(guest))]

    def wasmtime_tuned(guest, port, extra):
        return [wasmtime, "serve", *wasmtime_features(guest), "--addr", f"127.0.0.1:{port}",
                *WASMTIME_TUNED_FLAGS, str(guest_wasm(guest))]

    def wasmtime_reuse(guest, port, extra):
        # Instance reuse and nothing else (no timeout, so no epoch checks):
        # the fastest `wasmtime serve` found for the Python and JavaScript
        # guests, whose instances are large.
        return [wasmtime, "serve", *wasmtime_features(guest), "--addr", f"127.0.0.1:{port}",
                "-O", "pooling-allocator=y", "--max-instance-reuse-count", "1000",
                str(guest_wasm(guest))]

    def native_argv(guest, port, extra):
        return [str(native), f"127.0.0.1:{port}"]

    others = set(SCENARIOS) - {"sync-lane", "cpu-1-thread", "queue-embedded", "queue-redis"}
    kinds += [
        ServerKind("wasmtime-default", wasmtime_default, wasm_path, only=others),
        ServerKind("wasmtime-tuned", wasmtime_tuned, wasm_path, only=others),
        ServerKind("native", native_argv, native_path, only=others - TOOLCHAIN_SCENARIOS),
        ServerKind("wasmtime-reuse", wasmtime_reuse, wasm_path, only=TOOLCHAIN_SCENARIOS),
    ]
    return kinds


# The best `wasmtime serve` flags found for these scenarios (docs/performance.md
# says how they were chosen): pooling slots sized for 500+ requests in flight
# with pages kept resident, instance reuse (a WASIp2 instance serves up to
# 1000 requests, one at a time), and a timeout, which turns on its epoch
# ticker and so its yields.
WASMTIME_TUNED_FLAGS = [
    "-O", "pooling-allocator=y",
    "-O", "pooling-memory-keep-resident=1048576",
    "-O", "pooling-table-keep-resident=65536",
    "-O", "pooling-total-core-instances=8000",
    "-O", "pooling-total-component-instances=1000",
    "-O", "pooling-total-memories=2000",
    "-O", "pooling-total-tables=2000",
    "-O", "pooling-total-stacks=1000",
    "-W", "timeout=60s",
    "--max-instance-reuse-count", "1000",
]


# ---------------------------------------------------------------- load


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url, connections, seconds, threads=1, pin=None):
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s", url]
    if pin is not None:
        argv = ["taskset", "-c", str(pin), *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99_ms": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "errors": 0,
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(g) for g in sockets.groups()) if sockets else 0)
    return result


# ---------------------------------------------------------------- scenarios


def scenario_hello(kind, d, pinned, guest="hello", connections=64):
    pin_server, pin_wrk = (0, 1) if pinned else (None, None)
    server = kind.start(guest, pin=pin_server)
    try:
        result = wrk(server.url(kind.path(guest)), connections, d["load_s"], pin=pin_wrk)
        result["peak_rss_mib"] = (server.peak_rss_kib() or 0) / 1024
        return result
    finally:
        server.stop()


def scenario_cpu(kind, d):
    server = kind.start("cpu")
    try:
        return wrk(server.url(kind.path("cpu")), 8, d["load_s"])
    finally:
        server.stop()


def scenario_cpu_one_thread(kind, d):
    """cpu with one sync-lane thread per worker: what more workers buy."""
    server = kind.start("cpu", extra={"threads": 1})
    try:
        return wrk(server.url(kind.path("cpu")), 8, d["load_s"])
    finally:
        server.stop()


def scenario_io(kind, d):
    server = kind.start("sleep")
    try:
        path = kind.path("sleep") + ("&" if "?" in kind.path("sleep") else "?") + f"ms={IO_WAIT_MS}"
        result = wrk(server.url(path), IO_CONNECTIONS, d["load_s"], threads=2)
        result["little_fraction"] = result["rps"] / IO_LIMIT
        return result
    finally:
        server.stop()


SYNC_THREADS = 6
SYNC_WAIT_MS = 50


def scenario_sync_lane(kind, d):
    """fnhost's sync lane: `sleep` forced into it with 6 threads, 64 connections.
    Each call holds its thread, so throughput should be threads / latency."""
    port = free_port()
    argv = kind._start("sleep", port, {}) 
    argv = [*argv[:-1], "--mode", "sync", "--threads", str(SYNC_THREADS), argv[-1]]
    server = Server(kind.name, argv, port)
    try:
        server.wait_ready("/?ms=1")
        result = wrk(server.url(f"/?ms={SYNC_WAIT_MS}"), 64, d["load_s"])
        result["expected_rps"] = SYNC_THREADS * 1000 / SYNC_WAIT_MS
        return result
    finally:
        server.stop()


def scenario_fairness(kind, d):
    server = kind.start("hog")
    hog_path = kind.path("hog").replace("ms=0", f"ms={HOG_MS}")
    hogs = []

    def hog():
        try:
            urllib.request.urlopen(server.url(hog_path), timeout=HOG_MS / 1000 + 60).read()
        except OSError:
            pass

    try:
        for _ in range(2):
            thread = threading.Thread(target=hog, daemon=True)
            thread.start()
            hogs.append(thread)
        time.sleep(0.2)  # let both hogs start spinning
        result = wrk(server.url(kind.path("hog")), 4, 2)
        return result
    finally:
        for thread in hogs:
            thread.join(timeout=HOG_MS / 1000 + 60)
        server.stop()


def scenario_cold_start(kind, d, warm):
    """Median seconds from process start to the first 200 over d['cold_runs'] starts."""
    times = []
    for _ in range(d["cold_runs"]):
        extra = {}
        if kind.name == "fnhost" and not warm:
            extra["cache_dir"] = tempfile.mkdtemp(prefix="fnhost-cold-")
        port = free_port()
        server = Server(kind.name, kind._start("hello", port, extra), port)
        try:
            times.append(server.wait_ready(kind.path("hello", ready=True)))
        finally:
            server.stop()
            if "cache_dir" in extra:
                shutil.rmtree(extra["cache_dir"], ignore_errors=True)
    return {"start_ms": statistics.median(times) * 1000}


QUEUE_MESSAGES = 20_000
FNHOST_BIN = None  # set by main(): the queue scenarios use `fnhost queue`


def start_redis():
    """A throwaway redis-server on a free loopback port (installed from Debian if missing)."""
    if not shutil.which("redis-server"):
        log("redis-server not found: installing it from Debian")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "redis-server"])
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def queue_length(queue, data_dir):
    out = subprocess.run([str(FNHOST_BIN), "queue", "stats", "--data-dir", data_dir, queue],
                         capture_output=True, text=True, env=clean_env(), check=True).stdout
    return json.loads(out)["length"]


def scenario_queue(kind, d, backend):
    """Messages/s of the trivial queue_worker handler draining a preloaded backlog,
    timed from the first message handled to the queue being empty."""
    count = d["queue_messages"]
    data_dir = tempfile.mkdtemp(prefix="fnhost-queue-bench-")
    redis = None
    server = None
    try:
        if backend == "redis":
            redis, redis_port = start_redis()
            queue = f"redis://127.0.0.1:{redis_port}/bench"
        else:
            queue = "bench"
        backlog = Path(data_dir) / "backlog.txt"
        backlog.write_text("".join(f"m{i}\n" for i in range(count)))
        subprocess.run([str(FNHOST_BIN), "queue", "send", "--data-dir", data_dir, queue,
                        f"@{backlog}", "--lines"], stdout=subprocess.DEVNULL, env=clean_env(),
                       check=True)
        port = free_port()
        server = Server(kind.name, kind._start("queue_worker", port,
                                               {"queue": queue, "data_dir": data_dir}), port)
        deadline = time.monotonic() + 600
        first = None
        while time.monotonic() < deadline:
            left = queue_length(queue, data_dir)
            now = time.monotonic()
            if first is None and left < count:
                first = (now, left)
            if left == 0:
                break
            if server.proc.poll() is not None:
                raise RuntimeError(f"{kind.name} exited: {' | '.join(server.stderr_lines[-5:])}")
            time.sleep(0.05)
        else:
            raise RuntimeError("the queue did not drain within 600 s")
        started, left_then = first
        elapsed = max(time.monotonic() - started, 1e-3)
        return {"messages_per_s": left_then / elapsed, "messages": count}
    finally:
        if server:
            server.stop()
        if redis:
            redis.kill()
            redis.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


PYTHON_CONNECTIONS = 8


def scenario_python_io(kind, d):
    """An `async def` awaiting 50 ms at 500 connections."""
    server = kind.start("py-async")
    try:
        result = wrk(server.url(f"/sleep?ms={IO_WAIT_MS}"), IO_CONNECTIONS, d["load_s"], threads=2)
        result["little_fraction"] = result["rps"] / IO_LIMIT
        return result
    finally:
        server.stop()


PYTHON_SCENARIOS = {"python-hello", "python-raw-hello", "python-io"}
JS_SCENARIOS = {"js-hello"}
# Scenarios whose guests another language's toolchain builds.
TOOLCHAIN_SCENARIOS = PYTHON_SCENARIOS | JS_SCENARIOS

SCENARIOS = {
    "hello-pinned": lambda kind, d: scenario_hello(kind, d, pinned=True),
    "hello": lambda kind, d: scenario_hello(kind, d, pinned=False),
    "cpu": scenario_cpu,
    "cpu-1-thread": scenario_cpu_one_thread,
    "io": scenario_io,
    "fairness": scenario_fairness,
    "sync-lane": scenario_sync_lane,
    "cold-start-cold-cache": lambda kind, d: scenario_cold_start(kind, d, warm=False),
    "cold-start-warm-cache": lambda kind, d: scenario_cold_start(kind, d, warm=True),
    "queue-embedded": lambda kind, d: scenario_queue(kind, d, "embedded"),
    "queue-redis": lambda kind, d: scenario_queue(kind, d, "redis"),
    # What a CPython instance costs: `wrk -t1 -c8`.
    "python-hello": lambda kind, d: scenario_hello(kind, d, False, "py-hello", PYTHON_CONNECTIONS),
    "python-raw-hello": lambda kind, d: scenario_hello(kind, d, False, "py-raw", PYTHON_CONNECTIONS),
    "python-io": scenario_python_io,
    "js-hello": lambda kind, d: scenario_hello(kind, d, False, "js-hello", PYTHON_CONNECTIONS),
    "plain-hello": lambda kind, d: scenario_hello(kind, d, False, "plain_hello"),
}

DESCRIPTIONS = {
    "hello-pinned": "hello, `wrk -t1 -c64`, server on core 0, wrk on core 1",
    "hello": "hello, `wrk -t1 -c64`, unpinned",
    "cpu": "cpu (~5 ms of CPU per request), `wrk -t1 -c8`",
    "cpu-1-thread": "cpu with `--threads 1` (one sync-lane thread per worker), `wrk -t1 -c8`",
    "io": f"sleep {IO_WAIT_MS} ms on a host timer, `wrk -t2 -c{IO_CONNECTIONS}`; "
          f"Little's limit {IO_LIMIT:.0f} req/s",
    "fairness": f"hello (`wrk -t1 -c4 -d2s`) while two requests spin {HOG_MS / 1000:.0f} s without yielding",
    "sync-lane": f"fnhost's sync lane: sleep {SYNC_WAIT_MS} ms with `--mode sync --threads "
                 f"{SYNC_THREADS}`, `wrk -t1 -c64`; expected threads / latency = "
                 f"{SYNC_THREADS * 1000 / SYNC_WAIT_MS:.0f} req/s",
    "cold-start-cold-cache": "process start to first 200, empty compile cache (median of starts)",
    "cold-start-warm-cache": "process start to first 200, warm compile cache (median of starts)",
    "queue-embedded": "queue_worker (prints one line per message) draining a preloaded backlog "
                      "from the embedded SQLite queue, default batch settings",
    "queue-redis": "queue_worker draining a preloaded backlog from a local Redis stream",
    "python-hello": "Python SDK hello (`def`, examples/python/hello), `wrk -t1 -c8`",
    "python-raw-hello": "Python hello without the SDK (examples/python/raw-p2, no lane marker), "
                        "`wrk -t1 -c8`",
    "python-io": f"Python `async def` awaiting {IO_WAIT_MS} ms (examples/python/fanout, WASIp3), "
                 f"`wrk -t2 -c{IO_CONNECTIONS}`; Little's limit {IO_LIMIT:.0f} req/s",
    "plain-hello": "hello written against the `wasip2` bindings alone (examples/plain-hello, no "
                   "lane marker, what a guest for `wasmtime serve` looks like), `wrk -t1 -c64`",
    "js-hello": "JavaScript hello (examples/js/hello, componentize-js fetch handler, no lane "
                "marker), `wrk -t1 -c8`",
}


# ---------------------------------------------------------------- report


def median_of(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(raw):
    """raw[scenario][server] = [sample, ...] -> medians per scenario and server."""
    summary = {}
    for scenario, by_server in raw.items():
        summary[scenario] = {}
        for server, samples in by_server.items():
            keys = {k for s in samples for k in s}
            summary[scenario][server] = {k: median_of(samples, k) for k in sorted(keys)}
    return summary


def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"


def markdown(summary, environment, args):
    lines = ["# fnhost benchmark", "",
             f"Run {environment['date']} on {environment['cpu']} ({environment['cores']} cores), "
             f"commit {environment['commit']}, {args.rounds} round(s), "
             f"{args.duration}s per load run, servers alternating.", ""]
    for scenario, by_server in summary.items():
        lines += [f"## {scenario}", "", DESCRIPTIONS[scenario], ""]
        native = by_server.get("native", {})
        in_process = by_server.get("fnhost-in-process", {})
        one_worker = by_server.get("fnhost", {})
        # A server that answered with errors is not a baseline (wasmtime's
        # reuse breaks the componentize-js guest: every reused call fails).
        wasmtime_best = max((by_server.get(k, {})
                             for k in ("wasmtime-default", "wasmtime-tuned", "wasmtime-reuse")
                             if not by_server.get(k, {}).get("errors")),
                            key=lambda r: r.get("rps") or 0, default={})
        if scenario.startswith("queue"):
            lines += ["| server | messages/s | messages | × 1 worker |", "|---|---|---|---|"]
            for server, r in by_server.items():
                lines.append(f"| {server} | {fmt(r.get('messages_per_s'))} | "
                             f"{fmt(r.get('messages'))} | "
                             f"{ratio(r.get('messages_per_s'), one_worker.get('messages_per_s'))} |")
        elif scenario.startswith("cold-start"):
            lines += ["| server | start → first 200 (ms, median) |", "|---|---|"]
            for server, r in by_server.items():
                lines.append(f"| {server} | {fmt(r.get('start_ms'), 1)} |")
        else:
            extra = {"io": "of Little's limit", "fairness": "completed in 2 s",
                     "hello": "peak RSS (MiB)",
                     "sync-lane": "of threads / latency"}.get(scenario)
            header = ("| server | req/s | p50 (ms) | p99 (ms) | errors | × native | × best wasmtime "
                      "| × in-process | × 1 worker |")
            sep = "|---|---|---|---|---|---|---|---|---|"
            if extra:
                header += f" {extra} |"
                sep += "---|"
            lines += [header, sep]
            for server, r in by_server.items():
                row = (f"| {server} | {fmt(r.get('rps'))} | {fmt(r.get('p50_ms'), 2)} | "
                       f"{fmt(r.get('p99_ms'), 2)} | {fmt(r.get('errors'))} | "
                       f"{ratio(r.get('rps'), native.get('rps'))} | "
                       f"{ratio(r.get('rps'), wasmtime_best.get('rps'))} | "
                       f"{ratio(r.get('rps'), in_process.get('rps'))} | "
                       f"{ratio(r.get('rps'), one_worker.get('rps'))} |")
                if scenario == "io":
                    row += f" {fmt((r.get('little_fraction') or 0) * 100, 1)}% |"
                elif scenario == "fairness":
                    row += f" {fmt(r.get('requests'))} |"
                elif scenario == "hello":
                    row += f" {fmt(r.get('peak_rss_mib'), 1)} |"
                elif scenario == "sync-lane":
                    row += f" {ratio(r.get('rps'), r.get('expected_rps'))} |"
                lines.append(row)
        lines.append("")
    lines += ["## Environment", "", "```", json.dumps(environment, indent=2), "```", ""]
    return "\n".join(lines)


def environment_info(wasmtime):
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass

    def output(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unavailable"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "commit": output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "wrk": output(["wrk", "--version"]).splitlines()[0] if shutil.which("wrk") else "missing",
        "wasmtime": output([wasmtime, "--version"]) if wasmtime else "not run",
        "rustc": output(["rustc", "--version"]),
        "RUST_BACKTRACE for servers": "unset",
        "wasmtime tuned flags": " ".join(WASMTIME_TUNED_FLAGS),
    }


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one short round against fnhost alone, debug build (smoke check)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated subset of: " + ", ".join(SCENARIOS)
                             + " (default: all; with --quick, all but the Python and JavaScript ones, "
                               "which need componentize-py, componentize-js and about a minute "
                               "of component builds)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the fnhost binary already in target/ (CI builds it with the tests)")
    parser.add_argument("--servers", default=None,
                        help="comma-separated subset of: fnhost, fnhost-in-process, fnhost-forwarding, fnhost-2-workers, fnhost-app, fnhost-sync, "
                             "fnhost-4-workers, fnhost-async, wasmtime-default, wasmtime-tuned, "
                             "wasmtime-reuse, native")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.scenarios is None:
        args.scenarios = ",".join(s for s in SCENARIOS
                                  if not (args.quick and s in TOOLCHAIN_SCENARIOS))
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds must be 1-20 and --duration 1-120")

    raise_fd_limit()
    ensure_wrk()
    wants_wasmtime = not args.quick and (args.servers is None or "wasmtime" in args.servers)
    wasmtime = ensure_wasmtime() if wants_wasmtime else None
    fnhost, native = build("dev" if args.quick else "release", host=not args.no_build)
    if TOOLCHAIN_SCENARIOS & set(scenarios):
        build_toolchain_guests(scenarios)
    kinds = server_kinds(fnhost, native, wasmtime, args.quick)
    if args.servers:
        chosen = args.servers.split(",")
        unknown_servers = [c for c in chosen if c not in {k.name for k in kinds}]
        if unknown_servers:
            parser.error(f"unknown server(s): {', '.join(unknown_servers)}")
        kinds = [k for k in kinds if k.name in chosen]
    depth = {"load_s": args.duration, "cold_runs": 2 if args.quick else 5,
             "queue_messages": 1_000 if args.quick else QUEUE_MESSAGES}
    global FNHOST_BIN
    FNHOST_BIN = fnhost

    raw = {s: {k.name: [] for k in kinds if k.runs(s)} for s in scenarios}
    for round_number in range(1, args.rounds + 1):
        for scenario in scenarios:
            for kind in [k for k in kinds if k.runs(scenario)]:  # alternate servers
                log(f"round {round_number}/{args.rounds}: {scenario} on {kind.name}")
                sample = SCENARIOS[scenario](kind, depth)
                log(f"  {json.dumps(sample)}")
                raw[scenario][kind.name].append(sample)

    summary = summarize(raw)
    environment = environment_info(wasmtime)
    report = markdown(summary, environment, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (RESULTS / f"{name}.md").write_text(report)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"environment": environment, "raw": raw, "summary": summary}, indent=2))
    print(report)

    if args.quick:
        # The smoke check fails if fnhost answered with errors or not at all.
        failures = [f"{s}: {r}" for s, by in summary.items() for r in by.values()
                    if r.get("rps") is not None and (r["errors"] or not r["rps"])]
        if failures:
            sys.exit("quick benchmark saw failures: " + "; ".join(failures))


if __name__ == "__main__":
    main()
