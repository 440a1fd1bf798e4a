-- Timer sources: the next run of each timer route, so a restart neither skips nor doubles a
-- run (engine/src/timer.rs). Times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE timers (
    route_id   TEXT    PRIMARY KEY,
    -- The schedule the next run was computed from (cron expression and time zone): a changed
    -- schedule starts afresh from now.
    schedule   TEXT    NOT NULL,
    next_run   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
