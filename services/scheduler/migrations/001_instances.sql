-- Every instance the scheduler ever placed. `state` is what the scheduler wants and last saw:
--   starting  placed, process not started yet (or being started)
--   running   process started; pid/start_time/port say which one
--   stopped   stopped on purpose (StopModel); never started again by reconcile
--   exited    died on its own, or could not be started; the monitor may ask for a restart
CREATE TABLE instances (
    instance_id      TEXT PRIMARY KEY,
    model_id         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    version_id       TEXT NOT NULL,
    ordinal          INTEGER NOT NULL,
    image            TEXT NOT NULL,
    entrypoint       TEXT NOT NULL,
    workers          INTEGER NOT NULL,
    request_timeout  DOUBLE PRECISION NOT NULL,
    gpu_type         TEXT,
    gpu_count        INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN ('starting', 'running', 'stopped', 'exited')),
    -- Bumped at every start, so events about one run get ids of their own, stable across retries.
    generation       INTEGER NOT NULL DEFAULT 0,
    pid              INTEGER,
    start_time       BIGINT,
    port             INTEGER,
    address          TEXT,
    exit_status      INTEGER,
    reason           TEXT,
    -- The log shipper's position in instance.log, committed after the lines are published.
    log_offset       BIGINT NOT NULL DEFAULT 0,
    -- True while instance.log may still grow or has lines not yet shipped.
    log_open         BOOLEAN NOT NULL DEFAULT true,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX instances_model ON instances (model_id, version);
CREATE INDEX instances_live ON instances (state) WHERE state IN ('starting', 'running');
CREATE INDEX instances_log_open ON instances (instance_id) WHERE log_open;
