-- Version 3 of the relay schema: the relay's own connection to the MQTT broker, as it last
-- changed (connected or lost, since when, the last error), so `relay status` can show it.
-- One row, written by the relay at every change; `relay status` says alongside whether the
-- relay runs (its lock), since a stopped relay leaves the last state it wrote.
CREATE TABLE relay_mqtt_link (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    url           TEXT    NOT NULL,
    connected     INTEGER NOT NULL,
    since         TEXT    NOT NULL,
    last_error    TEXT,
    last_error_at TEXT,
    connections   INTEGER NOT NULL
);
