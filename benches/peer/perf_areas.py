#!/usr/bin/env python3
"""Where leap-edge's CPU goes, by area, from a `perf record` of the daemon (issue 17.2).

    CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        cargo build --release --target-dir target/prof
    perf record -F 1999 -g -p <pid of target/prof/release/leap-edge> -- sleep 10   # under wrk
    perf report --no-children --sort dso,sym --stdio -g none | grep % > report.txt
    python3 benches/peer/perf_areas.py target/prof/release/leap-edge report.txt

Symbols of the binary are resolved here from its symbol table (this machine's perf could
not read them itself); self time is summed by area with the patterns below.
"""
import re, subprocess, bisect, collections, sys
binary = sys.argv[1]
load = [l.split() for l in subprocess.run(["readelf", "-lW", binary], capture_output=True,
        text=True).stdout.splitlines() if "LOAD" in l and "R E" in l][0]
DELTA = int(load[2], 16) - int(load[1], 16)  # perf prints file offsets; nm gives addresses
syms = []
for line in subprocess.run(["nm", "-C", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1].lower() in ("t", "w"):
        syms.append((int(parts[0], 16), parts[2]))
syms.sort(); addrs = [a for a, _ in syms]
def name(addr):
    i = bisect.bisect_right(addrs, addr) - 1
    return syms[i][1] if i >= 0 else "?"
rules = [("SQLite (statements, B-tree, WAL)", r"sqlite3|pcache|btree|Vdbe|pager|wal|^[A-Z][a-zA-Z]+$|rusqlite"),
 ("JSON parse/serialise (serde_json)", r"serde|json"),
 ("HTTP (hyper, httparse)", r"hyper|httparse|http::|http_body"),
 ("async runtime (tokio)", r"tokio|mio"),
 ("logging (tracing, fmt)", r"tracing|core::fmt|Formatter|write_fmt|Display|chrono"),
 ("malloc/free/memcpy", r"malloc|free|realloc|_int_|memcpy|memmove|memset|memcmp|unlink_chunk|consolidate"),
 ("kernel: file writes + fsync (WAL)", r"ext4|blk|bio|folio|jbd2|iowrite|filemap|mark_buffer|file_|generic_perform|copy_folio|pwrite|fsync|vfs_|block_|balance_dirty|find_get_block|xas_|lruvec"),
 ("kernel: loopback TCP", r"tcp|sock|skb|ip_|net_|__dev|loopback|inet|softirq|_copy_to_iter|_copy_from_iter"),
 ("kernel: scheduling, futex, syscall entry", r"schedule|finish_task|futex|syscall|switch|wake|epoll|eventfd|raw_spin|irq|fdget|fput|security_|ktime")]
cats = collections.Counter(); top = collections.Counter()
for line in open(sys.argv[2]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
    if not m: continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if dso == "leap-edge" and sym.startswith("0x"):
        sym = name(int(sym, 16) + DELTA)
    if dso == "leap-edge": top[sym[:90]] += pct
    for n, rx in rules:
        if re.search(rx, sym):
            cats[n] += pct; break
    else:
        cats["other (" + ("kernel" if "kernel" in dso else dso) + ")"] += pct
for k, v in cats.most_common(): print(f"{v:6.1f}%  {k}")
print("--- top leap-edge symbols")
for k, v in top.most_common(25): print(f"{v:6.2f}%  {k}")
