#!/usr/bin/env python3
"""Which b-trees each ingest commit writes, in WAL pages (issue 17): the README's "What each
commit writes".

    python3 benches/peer/wal_pages.py --binary target/release/leap-edge --senders 1
    python3 benches/peer/wal_pages.py --binary target/release/leap-edge --senders 8

Runs leap-edge as bench.py does (fresh database, wrk with Leap's 1.8 KB sample and fresh event
ids) and, while wrk runs, reads the live `-wal` file every 50 ms. Only frames of the WAL's
current generation count (their salts match the header's; the checkpoint thread restarts the
WAL often, and older frames beyond are stale), and only whole transactions (up to the last
commit frame). Each page number is named after the run with SQLite's `dbstat` on the stopped
daemon's database. Needs wrk and a Python sqlite3 with `dbstat` (Debian's has it).
"""

import argparse
import collections
import contextlib
import glob
import os
import re
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HEADER = 32
FRAME_HEADER = 24


def transactions(wal):
    """Page numbers of each whole transaction in the WAL's current generation."""
    if len(wal) < HEADER:
        return []
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = wal[16:24]
    out, current, off = [], [], HEADER
    while off + FRAME_HEADER <= len(wal):
        page, commit_size = struct.unpack(">II", wal[off:off + 8])
        if wal[off + 8:off + 16] != salts:
            break
        current.append(page)
        if commit_size:
            out.append(current)
            current = []
        off += FRAME_HEADER + page_size
    return out


def sample(wal_path, stop, seen):
    """Collect transactions, keyed by (salts, first frame offset), until `stop` is set."""
    while not stop.is_set():
        try:
            with open(wal_path, "rb") as f:
                wal = f.read()
        except FileNotFoundError:
            wal = b""
        salts, offset = wal[16:24], 0
        for tx in transactions(wal):
            seen.setdefault((salts, offset), tx)
            offset += len(tx)
        time.sleep(0.05)


def batch_size(folder):
    """Notifications per ingest commit, from the daemon's /metrics."""
    config = open(glob.glob(os.path.join(folder, "leap-edge-*", "*.toml"))[0]).read()
    port = re.search(r'metrics_listen = "127.0.0.1:(\d+)"', config).group(1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    value = lambda name: float(re.search(rf"(?m)^{name} (\S+)$", text).group(1))
    return (value("leap_edge_store_committed_notifications_total")
            / max(1.0, value("leap_edge_store_commits_total")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(bench.REPO, "target", "release", "leap-edge"))
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="wal-pages-")
    small, _ = bench.templates(folder)
    os.sync()
    proc, port = bench.start("leap-edge", args, folder, False, None)
    db = glob.glob(os.path.join(folder, "leap-edge-*", "**", "*.db"), recursive=True)[0]
    stop, seen = threading.Event(), {}
    reader = threading.Thread(target=sample, args=(db + "-wal", stop, seen))
    reader.start()
    try:
        result = bench.wrk(port, args.senders, args.duration, small)
        per_commit = batch_size(folder)
    finally:
        stop.set()
        reader.join()
        bench.stop(proc)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    shutil.rmtree(folder, ignore_errors=True)
    txs = list(seen.values())
    if not txs:
        sys.exit("wal_pages: no whole transaction was read from the WAL")
    per_tree = collections.Counter(names.get(p, "(freed since)") for tx in txs for p in tx)
    pages = sum(len(tx) for tx in txs) / len(txs)
    print(f"{args.senders} sender(s): {result['acks']:.0f} acks/s, {per_commit:.2f} notifications "
          f"per commit; {len(txs)} transactions read: {pages:.2f} WAL pages each, "
          f"{pages / per_commit:.2f} per notification")
    print(f"  {'b-tree':40s} pages per transaction")
    for tree, n in per_tree.most_common():
        if n / len(txs) < 0.005:  # the migrations' transaction at start
            break
        print(f"  {tree:40s} {n / len(txs):6.2f}")


if __name__ == "__main__":
    main()
