-- Version 4 of the relay schema: messages an MQTT gateway acknowledged without storing them
-- (not a Leap notification, or over its limits), as its retained status last reported.
-- The relay had counted each as delivered; `relay status` shows them.
ALTER TABLE relay_mqtt_status ADD COLUMN refused_total INTEGER;
ALTER TABLE relay_mqtt_status ADD COLUMN last_refused_at TEXT;
ALTER TABLE relay_mqtt_status ADD COLUMN last_refused_error TEXT;
