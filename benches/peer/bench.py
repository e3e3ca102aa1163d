#!/usr/bin/env python3
"""leap-edge beside the receiver a partner would write (issue 17), in the same run.

For each sender count, each round starts a fresh leap-edge (release binary, the repository's
config.toml moved to a scratch folder, plain HTTP on loopback) and a fresh peer (FastAPI +
uvicorn, benches/peer/app.py, pinned stack installed from PyPI into target/peer-venv),
alternating which goes first, and drives each with wrk (keep-alive, one connection per
sender, Leap's 1.8 KB sample with fresh event ids on every request). It prints acks/s, p50
and p99 of both and the ratio. `--slow-flash` repeats every run with each fsync/fdatasync of
the server delayed 5 ms (strace fault injection), as on a gateway's eMMC; `--big` adds a
500 KB group notification (1,000 meters) at 8 senders. After the table, one line per issue 17
target whose case ran says whether every round met it (information: the exit status only
reports failed requests, so the CI smoke run does not depend on the machine's speed).

    python3 benches/peer/bench.py --binary target/release/leap-edge --slow-flash --big
    python3 benches/peer/bench.py --duration 1 --senders 1 --rounds 1    # smoke (CI)

Needs wrk (Debian package) and, for --slow-flash, strace >= 5.3.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import soak  # noqa: E402  (config rewriting and free ports, shared with the soak)

KEY = soak.KEY
PATH = "/leap/dispatch"
SLOW = ["strace", "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null",
        "-e", "trace=fsync,fdatasync",
        "-e", "inject=fsync:delay_exit=5000", "-e", "inject=fdatasync:delay_exit=5000"]


def venv():
    """target/peer-venv with requirements.txt installed; reinstalled when it changes."""
    req = os.path.join(HERE, "requirements.txt")
    path = os.path.join(REPO, "target", "peer-venv")
    stamp = os.path.join(path, "requirements.sha256")
    want = hashlib.sha256(open(req, "rb").read()).hexdigest()
    if not os.path.exists(stamp) or open(stamp).read() != want:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([os.path.join(path, "bin", "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "-r", req], check=True)
        with open(stamp, "w") as f:
            f.write(want)
    return path


def templates(folder):
    """Leap's sample with event ids made per request (EVENT is replaced by wrk), and a
    500 KB group notification naming 1,000 meters."""
    with open(os.path.join(REPO, "tests", "fixtures", "leap-sample-meter.json")) as f:
        sample = json.load(f)
    sample["integration_test_notification"] = False
    for d in sample["meter_dispatches"]:
        for i, t in enumerate(d["timeslots"]):
            t["meter_event_id"] = f"EVENT-{d['meter_id'][:4]}-{i}-{t['meter_event_id'][:2]}"
    small = os.path.join(folder, "small.json")
    with open(small, "w") as f:
        json.dump(sample, f, indent=2)
    slot = lambda k: {"market_group_event_id": f"EVENT-{k}", "start_time": "2023-06-05T00:00:00Z",
                      "end_time": "2023-06-05T01:00:00Z", "cancelled": False, "energy_kw": 10.0,
                      "performance_compensation_cap": "up-to-site-load", "priority": 1,
                      "is_voluntary": False, "dispatch_event_types": ["day-ahead"],
                      "programs": ["DRAM"]}
    big_doc = {"integration_test_notification": False, "communication_test": False,
               "group_dispatches": [{
                   "market_group_id": "11aa7aae-24e5-455f-91e9-e0f5f145f2ae",
                   "meter_ids": [f"{i:08x}-e392-4f00-b0cf-32e716204f78" for i in range(1000)],
                   "partner_references": [f"partner-reference-{i:06}-{'x' * 400}"
                                          for i in range(1000)],
                   "timeslots": [slot(0), slot(1)]}]}
    big = os.path.join(folder, "big.json")
    with open(big, "w") as f:
        json.dump(big_doc, f)
    return small, big


def wait_listening(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("bench: server did not listen in time")


def start(which, args, folder, slow, py):
    port = soak.free_port()
    run = tempfile.mkdtemp(prefix=f"{which}-", dir=folder)
    log = open(os.path.join(run, "server.log"), "w")
    prefix = SLOW if slow else []
    if which == "leap-edge":
        config = soak.write_config(run, port, soak.free_port())
        cmd = prefix + [args.binary, "--config", config, "run"]
        env = dict(os.environ, RUST_LOG="warn")
    else:
        cmd = prefix + [os.path.join(py, "bin", "uvicorn"), "app:app", "--app-dir", HERE,
                        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                        "--no-access-log"]
        env = dict(os.environ, PEER_DB=os.path.join(run, "peer.db"), PEER_KEY=KEY)
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    wait_listening(port, proc)
    return proc, port


def wrk(port, senders, duration, template):
    cmd = ["wrk", "-t", str(min(senders, 2)), "-c", str(senders), "-d", f"{duration}s",
           "--timeout", "10s", "-s", os.path.join(HERE, "post.lua"),
           f"http://127.0.0.1:{port}{PATH}", "--", template, KEY]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT (.*)", out)
    if not m:
        sys.exit(f"bench: wrk printed no result:\n{out}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    ok = r["requests"] - r["non2xx"] - r["errors"]
    return {"acks": ok / (r["duration_us"] / 1e6), "p50": r["p50_us"] / 1000,
            "p99": r["p99_us"] / 1000, "failed": r["non2xx"] + r["errors"], "ok": ok}


def measure(which, args, folder, slow, py, senders, template):
    # The previous run's dirty pages (its database and WAL) are written back now, not
    # during this run, so no run pays for another's I/O.
    os.sync()
    proc, port = start(which, args, folder, slow, py)
    try:
        return wrk(port, senders, args.duration, template)
    finally:
        stop(proc)


def stop(proc):
    """SIGTERM the server. Under strace, the server is strace's child and strace would only
    detach from it on SIGTERM, so the child is told first; strace exits after it."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        children = []
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not children:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def row(label, senders, rnd, a, b):
    ratio = a["acks"] / b["acks"] if b["acks"] else float("inf")
    print(f"| {label} | {senders} | {rnd} | {a['acks']:,.0f} | {b['acks']:,.0f} | {ratio:.1f}x "
          f"| {a['p50']:.2f} / {a['p99']:.2f} | {b['p50']:.2f} / {b['p99']:.2f} "
          f"| {a['failed']} / {b['failed']} |", flush=True)
    return a["failed"] + b["failed"], a["ok"] > 0 and b["ok"] > 0


# Issue 17's targets: (body, slow flash, senders) -> (what is checked, test on one round).
TARGETS = {
    ("1.8 KB", False, 8): ("acks/s >= 5x the peer", lambda a, b: a["acks"] >= 5 * b["acks"]),
    ("1.8 KB", False, 1): ("leap-edge p99 <= 1 ms", lambda a, b: a["p99"] <= 1.0),
    ("1.8 KB", True, 64): ("acks/s >= 20x the peer", lambda a, b: a["acks"] >= 20 * b["acks"]),
    ("500 KB", False, 8): ("leap-edge p99 <= 50 ms", lambda a, b: a["p99"] <= 50.0),
}


def verdicts(results):
    """One line per target whose case ran: met only if every round met it."""
    for (label, slow, senders), (what, test) in TARGETS.items():
        rounds = results.get((label, slow, senders))
        if rounds:
            met = sum(1 for a, b in rounds if test(a, b))
            state = "met" if met == len(rounds) else "NOT met"
            print(f"# target {label}, {'5 ms' if slow else 'as is'}, {senders} sender(s), "
                  f"{what}: {state} ({met} of {len(rounds)} rounds)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/leap-edge"))
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--senders", default="1,8,64", help="comma-separated connection counts")
    ap.add_argument("--slow-flash", action="store_true", help="also with fsync delayed 5 ms")
    ap.add_argument("--only-slow", action="store_true", help="only the slow-flash runs")
    ap.add_argument("--big", action="store_true", help="also 500 KB notifications, 8 senders")
    args = ap.parse_args()
    for tool in ["wrk"] + (["strace"] if args.slow_flash or args.only_slow else []):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (apt-get install {tool})")
    py = venv()
    folder = tempfile.mkdtemp(prefix="leap-edge-peer-bench-")
    small, big = templates(folder)
    flashes = [True] if args.only_slow else [False] + ([True] if args.slow_flash else [])
    cases = [(s, "1.8 KB", small) for s in map(int, args.senders.split(","))]
    if args.big:
        cases.append((8, "500 KB", big))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{args.duration} s per run, {args.rounds} rounds, alternating order")
    print("| body, fsync | senders | round | leap-edge acks/s | peer acks/s | ratio "
          "| leap-edge p50 / p99 ms | peer p50 / p99 ms | failed (leap / peer) |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed, all_ok, results = 0, True, {}
    for slow in flashes:
        for senders, label, template in cases:
            for rnd in range(1, args.rounds + 1):
                order = ["leap-edge", "peer"] if rnd % 2 else ["peer", "leap-edge"]
                res = {w: measure(w, args, folder, slow, py, senders, template) for w in order}
                f, ok = row(f"{label}, {'5 ms' if slow else 'as is'}", senders, rnd,
                            res["leap-edge"], res["peer"])
                failed, all_ok = failed + f, all_ok and ok
                results.setdefault((label, slow, senders), []).append(
                    (res["leap-edge"], res["peer"]))
    verdicts(results)
    shutil.rmtree(folder, ignore_errors=True)
    if failed or not all_ok:
        sys.exit("bench: some requests failed or a server acknowledged nothing")


if __name__ == "__main__":
    main()
