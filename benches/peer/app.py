"""The receiver a partner would write from Leap's webhook guide (issue 17's peer): FastAPI on
uvicorn, an x-api-key check, SQLite in WAL mode with synchronous=FULL, one transaction per
notification committed before the 200, a timeslot table keyed by event id with revisions.
Deliberately ordinary: this is the baseline leap-edge is measured against, not a product.

    PEER_DB=/tmp/peer.db PEER_KEY=k uvicorn app:app --port 8000
"""

import json
import os
import sqlite3
from datetime import datetime, timezone

from fastapi import FastAPI, HTTPException, Request

KEY = os.environ.get("PEER_KEY", "dev-key-change-me")
DB = os.environ.get("PEER_DB", "peer.db")

db = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.executescript("""
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS timeslots (
    kind TEXT NOT NULL, event_id TEXT NOT NULL, content TEXT NOT NULL,
    revisions INTEGER NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, event_id));
CREATE TABLE IF NOT EXISTS timeslot_revisions (
    kind TEXT NOT NULL, event_id TEXT NOT NULL, revision INTEGER NOT NULL,
    notification_id INTEGER NOT NULL, content TEXT NOT NULL);
""")

app = FastAPI()


def slots(doc):
    for d in doc.get("meter_dispatches") or []:
        for t in d.get("timeslots") or []:
            yield "meter", t["meter_event_id"], t
    for d in doc.get("group_dispatches") or []:
        for t in d.get("timeslots") or []:
            yield "group", t["market_group_event_id"], t


def store(body, doc):
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        cur.execute("INSERT INTO notifications (received_at, body) VALUES (?, ?)",
                    (datetime.now(timezone.utc).isoformat(), body))
        nid = cur.lastrowid
        new = dup = upd = 0
        for kind, event_id, t in slots(doc):
            content = json.dumps(t, sort_keys=True)
            row = cur.execute("SELECT content, revisions FROM timeslots WHERE kind=? AND event_id=?",
                              (kind, event_id)).fetchone()
            if row is None:
                cur.execute("INSERT INTO timeslots (kind, event_id, content, revisions) "
                            "VALUES (?, ?, ?, 1)", (kind, event_id, content))
                rev, new = 1, new + 1
            elif row[0] == content:
                cur.execute("UPDATE timeslots SET duplicates = duplicates + 1 "
                            "WHERE kind=? AND event_id=?", (kind, event_id))
                dup += 1
                continue
            else:
                rev, upd = row[1] + 1, upd + 1
                cur.execute("UPDATE timeslots SET content=?, revisions=? WHERE kind=? AND event_id=?",
                            (content, rev, kind, event_id))
            cur.execute("INSERT INTO timeslot_revisions VALUES (?, ?, ?, ?, ?)",
                        (kind, event_id, rev, nid, content))
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return {"status": "ok", "notification_id": nid, "new": new, "updated": upd, "duplicate": dup}


@app.post("/leap/dispatch")
async def receive(request: Request):
    if request.headers.get("x-api-key") != KEY:
        raise HTTPException(status_code=401, detail="missing or wrong credentials")
    body = await request.body()
    try:
        doc = json.loads(body)
    except ValueError:
        raise HTTPException(status_code=400, detail="body is not JSON")
    try:
        return store(body.decode("utf-8", "replace"), doc)
    except sqlite3.Error:
        raise HTTPException(status_code=503, detail="storage unavailable")
