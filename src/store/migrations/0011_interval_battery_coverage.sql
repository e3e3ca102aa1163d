-- How long of each interval the battery's own power was read (ms). The delivered energy is
-- integrated from it; a reading without it (a stuck or unimplemented battery point) still
-- counts for the grid's coverage, so without this the report judged "0 kWh delivered" as a
-- MISSED event instead of INCOMPLETE DATA. NULL on intervals recorded before: read as
-- `covered_ms`, what was assumed then.
ALTER TABLE intervals ADD COLUMN battery_ms INTEGER;
