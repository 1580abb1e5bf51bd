#!/usr/bin/env python3
"""How well fnhost sizes itself (issue 13): two experiments on fnhost alone.

    bench/adapt.py threads     # a mixed app under load, fixed --threads swept against auto
    bench/adapt.py overload    # twice the sustainable rate: what is admitted, what is shed

`threads`: one app of two sync-lane functions served together, `waits` (the
`sleep` example, 50 ms on a host timer per call, `wrk -c200`) and
`computes` (the `cpu` example, about 5 ms of CPU per call, `wrk -c8`),
both loaded at once. Every setting gets the same warm-up (so `auto` has
settled) and then a measured run; settings alternate within each round.

`overload`: the `cpu` example alone. Its sustainable rate is measured with
`wrk -c8`; then an open-loop client (requests sent on a fixed schedule,
latency counted from the scheduled time, so a slow server cannot slow the
client down) offers a quarter of it (the unloaded p99) and then twice it,
to the defaults and then to `--load-shedding on` (or --serve-flags).

Uses the release build in target/ (bench/bench.py builds it) and the
examples' release components. Results: printed, and written to
bench/results/adapt-<experiment>.md and .json.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: build, Server, wrk)

WAIT_MS = 50
WAIT_CONNECTIONS = 200
CPU_CONNECTIONS = 8
SETTINGS = ["1", "2", "4", "6", "8", "16", "32", "64", "128", "256", "auto"]
WARM_UP_S = 5


def mixed_manifest(folder):
    """A manifest of the two functions, in `folder`."""
    manifest = Path(folder) / "fnhost.toml"
    manifest.write_text(f"""manifest_version = 1

[[function]]
name = "waits"
component = "{bench.guest_wasm('sleep')}"
route = "/waits"
mode = "sync"

[[function]]
name = "computes"
component = "{bench.guest_wasm('cpu')}"
route = "/computes"
""")
    return manifest


def run_both(server, seconds):
    """Loads both functions at once; returns (waits, computes) wrk results."""
    results = {}

    def load(name, path, connections):
        result = bench.wrk(server.url(path), connections, seconds)
        # Refusals are answers too, to wrk: count only the 200s.
        answered = max(result["requests"], 1)
        result["ok_rps"] = result["rps"] * max(0, answered - result["errors"]) / answered
        results[name] = result

    threads = [threading.Thread(target=load, args=("waits", f"/waits?ms={WAIT_MS}",
                                                   WAIT_CONNECTIONS)),
               threading.Thread(target=load, args=("computes", "/computes", CPU_CONNECTIONS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results["waits"], results["computes"]


def threads_experiment(fnhost, args):
    folder = tempfile.mkdtemp(prefix="fnhost-adapt-")
    manifest = mixed_manifest(folder)
    settings = args.settings.split(",")
    raw = {s: [] for s in settings}
    for round_number in range(1, args.rounds + 1):
        order = settings if round_number % 2 else list(reversed(settings))
        for setting in order:
            port = bench.free_port()
            argv = [str(fnhost), "serve", "--listen", f"127.0.0.1:{port}",
                    "--threads", setting, str(manifest)]
            server = bench.Server(f"threads {setting}", argv, port)
            try:
                server.wait_ready("/computes?n=1")
                run_both(server, WARM_UP_S)
                waits, computes = run_both(server, args.duration)
            finally:
                server.stop()
            changes = [line for line in server.stderr_lines if "sync-lane threads" in line]
            sample = {"waits": waits, "computes": computes, "thread_changes": len(changes),
                      "last_change": changes[-1] if changes else None}
            bench.log(f"round {round_number}: --threads {setting}: "
                      f"waits {waits['rps']:.0f} req/s p99 {waits['p99_ms']:.1f} ms, "
                      f"computes {computes['rps']:.0f} req/s p99 {computes['p99_ms']:.1f} ms, "
                      f"{len(changes)} changes")
            raw[setting].append(sample)
    summary = {}
    for setting, samples in raw.items():
        summary[setting] = {
            f"{fn}_{key}": statistics.median(s[fn][key] for s in samples)
            for fn in ("waits", "computes") for key in ("ok_rps", "p99_ms", "errors")}
    # A setting that refused calls is no candidate for the best.
    fixed = {s: v for s, v in summary.items()
             if s != "auto" and not v["waits_errors"] and not v["computes_errors"]}
    lines = ["# fnhost: fixed --threads against auto, a mixed app", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rounds} round(s) "
             f"of {args.duration} s after {WARM_UP_S} s of warm-up, medians. `waits`: "
             f"{WAIT_MS} ms on a timer, `wrk -c{WAIT_CONNECTIONS}`; `computes`: ~5 ms CPU, "
             f"`wrk -c{CPU_CONNECTIONS}`; both at once, one worker.", "",
             "| --threads | waits 200/s | waits p99 ms | computes 200/s | computes p99 ms "
             "| errors (503 or socket) |",
             "|---|---|---|---|---|---|"]
    for setting, r in summary.items():
        lines.append(f"| {setting} | {r['waits_ok_rps']:,.0f} | {r['waits_p99_ms']:.1f} | "
                     f"{r['computes_ok_rps']:,.0f} | {r['computes_p99_ms']:.1f} | "
                     f"{r['waits_errors'] + r['computes_errors']:,.0f} |")
    if "auto" in summary and fixed:
        auto = summary["auto"]

        def versus(setting, fn):
            other = fixed[setting]
            return (f"{auto[f'{fn}_ok_rps'] / other[f'{fn}_ok_rps']:.2f}× the throughput, "
                    f"p99 {auto[f'{fn}_p99_ms'] / other[f'{fn}_p99_ms']:.2f}×")

        best = {fn: max(fixed, key=lambda s: fixed[s][f"{fn}_ok_rps"])
                for fn in ("waits", "computes")}
        lines += ["", "auto against:"]
        for fn in ("waits", "computes"):
            lines.append(f"- the best fixed setting for `{fn}` (--threads {best[fn]}): "
                         f"`{fn}` {versus(best[fn], fn)}")
        # Where the waiting function is best served, the CPU it takes is
        # gone from the other: the fair comparison for `computes` is there.
        lines.append(f"- the setting best for `waits` (--threads {best['waits']}), for `computes`: "
                     f"{versus(best['waits'], 'computes')}")
        old = "6" if "6" in summary else "8" if "8" in summary else None
        if old:
            lines.append(f"- --threads {old} (about the old default, min(32, cores + 4)): "
                         f"`waits` {auto['waits_ok_rps'] / summary[old]['waits_ok_rps']:.1f}× "
                         f"the throughput, `computes` p99 "
                         f"{auto['computes_p99_ms'] / summary[old]['computes_p99_ms']:.2f}×")
    last = [s["last_change"] for s in raw.get("auto", []) if s["last_change"]]
    if last:
        lines += ["", "Last change `auto` made (log line, last round):", "", "```", last[-1], "```"]
    return raw, summary, "\n".join(lines) + "\n"


# ---------------------------------------------------------------- overload


async def open_loop(port, path, rate, seconds, connections=512):
    """Sends `rate` requests per second for `seconds` on a fixed schedule;
    returns [(status, retry_after, latency_s)], latency from the scheduled time."""
    loop = asyncio.get_running_loop()
    idle = asyncio.Queue()
    opened = 0
    results = []
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()

    async def read_response(reader):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        return status, "retry-after" in headers

    async def one(scheduled):
        nonlocal opened
        try:
            connection = idle.get_nowait()
        except asyncio.QueueEmpty:
            if opened >= connections:
                connection = await idle.get()
            else:
                opened += 1
                connection = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = connection
        try:
            writer.write(request)
            status, retry_after = await asyncio.wait_for(read_response(reader), 30)
            results.append((status, retry_after, loop.time() - scheduled))
            idle.put_nowait(connection)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            results.append((0, False, loop.time() - scheduled))
            writer.close()
            opened -= 1

    start = loop.time() + 0.1
    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    return results


def percentile(values, fraction):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def describe(results):
    ok = [latency * 1000 for status, _, latency in results if status == 200]
    shed = [(latency * 1000, retry) for status, retry, latency in results if status == 503]
    other = [status for status, _, _ in results if status not in (200, 503)]
    return {"sent": len(results), "ok": len(ok), "ok_p50_ms": percentile(ok, 0.5),
            "ok_p99_ms": percentile(ok, 0.99), "shed": len(shed),
            "shed_p99_ms": percentile([ms for ms, _ in shed], 0.99),
            "shed_without_retry_after": sum(1 for _, retry in shed if not retry),
            "other_failures": len(other)}


def start_cpu_server(fnhost, flags):
    port = bench.free_port()
    argv = [str(fnhost), "serve", "--listen", f"127.0.0.1:{port}", *flags,
            str(bench.guest_wasm("cpu"))]
    server = bench.Server(" ".join(flags) or "defaults", argv, port)
    server.wait_ready("/?n=1")
    return server


def overload_experiment(fnhost, args):
    """Per round: the defaults (capacity, unloaded p99, twice the capacity
    offered), then `--load-shedding on` at the same rates."""
    rounds = []
    shedding = args.extra or ["--load-shedding", "on"]
    log_lines = []
    for round_number in range(1, args.rounds + 1):
        sample = {}
        for name, flags in (("queueing", []), ("shedding", shedding)):
            server = start_cpu_server(fnhost, flags)
            try:
                bench.wrk(server.url("/"), CPU_CONNECTIONS, 2)  # warm
                if name == "queueing":
                    closed = bench.wrk(server.url("/"), CPU_CONNECTIONS, args.duration)
                    sample["capacity_rps"] = closed["rps"]
                rate = sample["capacity_rps"]
                sample[name] = {
                    "unloaded": describe(asyncio.run(open_loop(server.port, "/", rate / 4,
                                                               args.duration))),
                    "overloaded": describe(asyncio.run(open_loop(server.port, "/", rate * 2,
                                                                 args.duration))),
                }
            finally:
                server.stop()
            log_lines += [line for line in server.stderr_lines if "at once" in line]
        bench.log(f"round {round_number}: {json.dumps(sample)}")
        rounds.append(sample)
    lines = ["# fnhost: twice the sustainable rate", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the `cpu` example "
             f"(~5 ms of CPU per call, sync lane, `--threads auto`); capacity from "
             f"`wrk -c{CPU_CONNECTIONS} -d{args.duration}s` on the defaults, then an open-loop "
             f"client at a quarter of it (unloaded) and at twice it, {args.duration} s each, "
             f"on the defaults and with `{' '.join(shedding)}`.", "",
             "| round | server | capacity req/s | unloaded p99 ms | offered req/s | admitted "
             "| admitted p99 ms | × unloaded p99 | shed | shed p99 ms | shed without Retry-After "
             "| other failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for number, r in enumerate(rounds, 1):
        for name in ("queueing", "shedding"):
            u, o = r[name]["unloaded"], r[name]["overloaded"]
            ratio = (o["ok_p99_ms"] / u["ok_p99_ms"]) if o["ok_p99_ms"] and u["ok_p99_ms"] else 0
            lines.append(
                f"| {number} | {name} | {r['capacity_rps']:,.0f} | {u['ok_p99_ms'] or 0:.1f} | "
                f"{2 * r['capacity_rps']:,.0f} | {o['ok']:,} | {o['ok_p99_ms'] or 0:.1f} | "
                f"{ratio:.2f}× | {o['shed']:,} | {o['shed_p99_ms'] or 0:.1f} | "
                f"{o['shed_without_retry_after']} | {o['other_failures'] + u['other_failures']} |")
    if log_lines:
        lines += ["", "Log lines:", "", "```", *log_lines[-4:], "```"]
    return rounds, None, "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["threads", "overload"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="threads: the --threads values to compare")
    parser.add_argument("--no-build", action="store_true",
                        help="use the fnhost binary already in target/release")
    parser.add_argument("--serve-flags", default="",
                        help="overload: the flags of the second server, instead of "
                             "'--load-shedding on'")
    args = parser.parse_args()
    args.extra = args.serve_flags.split()
    bench.raise_fd_limit()
    bench.ensure_wrk()
    fnhost, _ = bench.build("release", host=not args.no_build)
    experiment = threads_experiment if args.experiment == "threads" else overload_experiment
    raw, summary, report = experiment(fnhost, args)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"adapt-{args.experiment}"
    (bench.RESULTS / f"{name}.md").write_text(report)
    (bench.RESULTS / f"{name}.json").write_text(json.dumps({"raw": raw, "summary": summary},
                                                           indent=2))
    print(report)


if __name__ == "__main__":
    main()
