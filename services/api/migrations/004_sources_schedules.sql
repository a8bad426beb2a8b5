-- Where each version's code came from, and what it was built with.
ALTER TABLE versions
    ADD COLUMN source_name     TEXT,
    ADD COLUMN git_url         TEXT,
    ADD COLUMN git_ref         TEXT,
    ADD COLUMN git_credential  TEXT,
    ADD COLUMN commit          TEXT,
    ADD COLUMN environment     TEXT,
    ADD COLUMN python_version  TEXT,
    ADD COLUMN env_hash        TEXT;

-- Named sources: a movable name for a content-addressed upload.
CREATE TABLE named_sources (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Compute environments an admin defines.
CREATE TABLE environments (
    name            TEXT PRIMARY KEY,
    python_version  TEXT,
    packages        JSONB NOT NULL DEFAULT '[]',
    description     TEXT NOT NULL DEFAULT '',
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Scheduled rebuilds.
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    cron        TEXT NOT NULL,
    command     TEXT NOT NULL,
    timeout     DOUBLE PRECISION NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per run; (schedule_id, slot) is unique, so however many api replicas look at a slot,
-- one insert wins and the slot runs once. Runs started by hand have no slot.
CREATE TABLE schedule_runs (
    id           TEXT PRIMARY KEY,
    schedule_id  TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    model_id     TEXT NOT NULL,
    slot         TIMESTAMPTZ,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    log          JSONB NOT NULL DEFAULT '[]',
    version      INT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    UNIQUE (schedule_id, slot)
);
CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule_id, created_at DESC);
