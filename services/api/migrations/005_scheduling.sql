-- GPUs, quotas, the wait queue, stop / restart / terminate and usage (issue 5).

-- What a model API asks for; fixed at create time (a new model API is the way to change them).
ALTER TABLE models
    ADD COLUMN quota           TEXT,
    ADD COLUMN cpu             DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN memory          BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN disk_size       BIGINT NOT NULL DEFAULT 0,
    -- 1-based place in line while `waiting`.
    ADD COLUMN queue_position  INT,
    ADD COLUMN stopped_at      TIMESTAMPTZ;

-- Terminate frees the name: only model APIs that are not terminated keep theirs unique.
ALTER TABLE models DROP CONSTRAINT models_name_key;
CREATE UNIQUE INDEX models_live_name ON models (name) WHERE state <> 'terminated';

-- Runs of instances that ended (one UsageRecorded each), and the runs going on now.
CREATE TABLE usage (
    event_id          TEXT PRIMARY KEY,
    model_id          TEXT NOT NULL,
    version           INT NOT NULL,
    instance_id       TEXT NOT NULL,
    started_at        DOUBLE PRECISION NOT NULL,
    ended_at          DOUBLE PRECISION NOT NULL,
    gpu_count         INT NOT NULL,
    instance_seconds  DOUBLE PRECISION NOT NULL,
    gpu_seconds       DOUBLE PRECISION NOT NULL
);
CREATE INDEX usage_model ON usage (model_id);

CREATE TABLE usage_open (
    instance_id  TEXT PRIMARY KEY,
    model_id     TEXT NOT NULL,
    gpu_count    INT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX usage_open_model ON usage_open (model_id);
