#!/usr/bin/env python3
"""Memory soak (issue 18): run the release daemon on the repository's config.toml (simulator
inside) in a scratch folder, send it a steady stream of real meter dispatches (each a few
seconds long, starting a moment later, executed on the simulated battery), and print RSS,
anonymous memory and the daemon's own CPU over time, read from /proc/<pid>.

    python3 benches/soak.py --binary target/release/leap-edge --duration 3600 --rate 20

CPU is the daemon's own utime+stime from /proc/<pid>/stat, so other work on a shared machine
does not count. Python standard library only. Exit status 1 if any notification was not
acknowledged with 200 or no dispatch reached the simulator.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METER = "dd21c76c-7126-4ef7-b0a6-f190fad300b2"  # the simulated meter in config.toml
KEY = "dev-key-change-me-0123456789abcdef"  # config.toml's [auth] key
PROGRAMS = ["DRAM", "ELRP", "CCA", "PJM-CAPACITY", "NYISO-SCR"]
CAPS = ["up-to-site-load", "up-to-nomination", "grid-exports-allowed"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder, http_port, sim_port, metrics_port=None):
    """config.toml with the listener, simulator, database and socket moved into `folder`."""
    with open(os.path.join(REPO, "config.toml")) as f:
        text = f.read()
    subs = [
        (r'(?m)^devices_dir = .*$', f'devices_dir = "{os.path.join(REPO, "devices")}"'),
        (r'(?m)^listen = "127\.0\.0\.1:8443"$', f'listen = "127.0.0.1:{http_port}"'),
        (r'(?m)^path = "var/leap-edge\.db"$', f'path = "{folder}/leap-edge.db"'),
        (r'(?m)^socket = "var/admin\.sock"$', f'socket = "{folder}/admin.sock"'),
        (r'(?m)^port = 1502$', f"port = {sim_port}"),
        (r'(?m)^listen = "127\.0\.0\.1:1502"$', f'listen = "127.0.0.1:{sim_port}"'),
        # Its own metrics port, so a soak beside another daemon (CI, a second soak) can run.
        (r'(?m)^metrics_listen = "127\.0\.0\.1:9464"$',
         f'metrics_listen = "127.0.0.1:{metrics_port or free_port()}"'),
    ]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        if n != 1:
            sys.exit(f"soak: config.toml changed shape; cannot rewrite {pattern!r}")
    path = os.path.join(folder, "config.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def notification(n, lead_s, slot_s):
    start = datetime.now(timezone.utc) + timedelta(seconds=lead_s)
    end = start + timedelta(seconds=slot_s)
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    slot = {
        "meter_event_id": str(uuid.uuid4()),
        "start_time": fmt(start),
        "end_time": fmt(end),
        "cancelled": False,
        "energy_kw": float(5 + n % 30),
        "nomination_kw": 40.0,
        "performance_compensation_cap": CAPS[n % len(CAPS)],
        "priority": 1 + n % 5,
        "is_voluntary": n % 2 == 0,
        "dispatch_event_types": ["5m"],
        "programs": [PROGRAMS[n % len(PROGRAMS)]],
    }
    return json.dumps({
        "integration_test_notification": False,
        "communication_test": False,
        "meter_dispatches": [{"meter_id": METER, "partner_reference": f"soak-{n}",
                              "timeslots": [slot]}],
    })


class Sender(threading.Thread):
    def __init__(self, port, rate, duration, lead_s, slot_s):
        super().__init__(daemon=True)
        self.port, self.rate, self.duration = port, rate, duration
        self.lead_s, self.slot_s = lead_s, slot_s
        self.sent = self.acked = self.failed = 0
        self.stop = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        t0 = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - t0 < self.duration:
            # Absolute schedule: a slow ack does not lower the average rate.
            due = t0 + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = notification(n, self.lead_s, self.slot_s)
            n += 1
            self.sent += 1
            try:
                conn.request("POST", "/leap/dispatch", body,
                             {"content-type": "application/json", "x-api-key": KEY})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.acked += 1
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def proc_sample(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024.0
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    ticks = int(stat[11]) + int(stat[12])  # utime + stime (fields 14, 15)
    return fields, ticks / os.sysconf("SC_CLK_TCK")


def wait_listening(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soak: daemon exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("soak: daemon did not listen in time")


def audit_counts(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT action, outcome, COUNT(*) FROM audit GROUP BY action, outcome").fetchall()
    slots = conn.execute("SELECT COUNT(*) FROM timeslots").fetchone()[0]
    conn.close()
    return {f"{a}/{o}": c for a, o, c in rows}, slots


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/leap-edge"))
    ap.add_argument("--duration", type=float, default=3600, help="seconds of sending")
    ap.add_argument("--rate", type=float, default=20, help="notifications per second")
    ap.add_argument("--sample", type=float, default=60, help="seconds between samples")
    ap.add_argument("--slot-secs", type=float, default=4, help="length of each timeslot")
    ap.add_argument("--lead-secs", type=float, default=1, help="timeslot start after sending")
    ap.add_argument("--after", type=float, default=60, help="seconds sampled after the stream")
    ap.add_argument("--keep", help="folder for the database and log (default: temporary)")
    ap.add_argument("--wrap", default="", help="command the daemon runs under, e.g. "
                    "'heaptrack -o /tmp/soak' (memory columns then show the wrapper)")
    args = ap.parse_args()

    folder = args.keep or tempfile.mkdtemp(prefix="leap-edge-soak-")
    os.makedirs(folder, exist_ok=True)
    http_port, sim_port = free_port(), free_port()
    config = write_config(folder, http_port, sim_port)
    log = open(os.path.join(folder, "daemon.log"), "w")
    cmd = args.wrap.split() + [args.binary, "--config", config, "run"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        wait_listening(http_port, proc)
        run(args, proc, http_port, folder)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    counts, slots = audit_counts(os.path.join(folder, "leap-edge.db"))
    print(f"timeslots stored: {slots}; audit: {counts}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    if counts.get("apply/ok", 0) == 0:
        sys.exit("soak: no dispatch reached the simulator")


def run(args, proc, port, folder):
    sender = Sender(port, args.rate, args.duration, args.lead_secs, args.slot_secs)
    t0 = time.monotonic()
    _, cpu0 = proc_sample(proc.pid)
    last_t, last_cpu = t0, cpu0
    print(f"# soak: rate {args.rate}/s for {args.duration:.0f} s, slots {args.slot_secs} s, "
          f"folder {folder}, pid {proc.pid}")
    print(f"{'elapsed_s':>9} {'sent':>8} {'acked':>8} {'failed':>6} {'rss_mb':>7} "
          f"{'anon_mb':>7} {'hwm_mb':>7} {'cpu_%':>6} {'cpu_avg_%':>9}", flush=True)
    sender.start()
    end = t0 + args.duration + args.after
    next_sample = t0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            mem, cpu = proc_sample(proc.pid)
            interval = max(now - last_t, 1e-9)
            print(f"{now - t0:9.0f} {sender.sent:8d} {sender.acked:8d} {sender.failed:6d} "
                  f"{mem['VmRSS']:7.1f} {mem['RssAnon']:7.1f} {mem['VmHWM']:7.1f} "
                  f"{100 * (cpu - last_cpu) / interval:6.1f} "
                  f"{100 * (cpu - cpu0) / max(now - t0, 1e-9):9.1f}", flush=True)
            last_t, last_cpu = now, cpu
            next_sample += args.sample
        if now >= end or proc.poll() is not None:
            break
        time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
    sender.stop.set()
    sender.join(timeout=35)
    if proc.poll() is not None:
        sys.exit(f"soak: daemon exited with {proc.returncode}")
    print(f"# sent {sender.sent}, acked {sender.acked}, failed {sender.failed}")
    if sender.failed or sender.acked == 0:
        sys.exit("soak: some notifications were not acknowledged")


if __name__ == "__main__":
    main()
