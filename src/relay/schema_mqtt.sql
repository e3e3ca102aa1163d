-- Version 2 of the relay schema (SPEC §2.12 fleets over MQTT): what the relay last heard on
-- each MQTT gateway's retained status topic (the gateway's status, or its last will).
CREATE TABLE relay_mqtt_status (
    gateway        TEXT PRIMARY KEY,
    online         INTEGER NOT NULL,
    status_at      TEXT,
    received_at    TEXT NOT NULL,
    last_commit_at TEXT
);
