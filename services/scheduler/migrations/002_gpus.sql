-- GPUs, the wait queue and usage metering.

-- Where each instance runs and what it is given; the same on every restart of the instance.
ALTER TABLE instances
    ADD COLUMN node         TEXT NOT NULL DEFAULT 'local',
    ADD COLUMN gpu_devices  TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN quota        TEXT NOT NULL DEFAULT '',
    ADD COLUMN cpu          DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN memory       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN disk_size    BIGINT NOT NULL DEFAULT 0;

-- One row per GPU in use. The primary key is what makes double allocation impossible, even when
-- two schedulers (one about to die, one just started) decide at once.
CREATE TABLE allocations (
    node         TEXT NOT NULL,
    device       TEXT NOT NULL,
    gpu_type     TEXT NOT NULL,
    instance_id  TEXT NOT NULL REFERENCES instances(instance_id) ON DELETE CASCADE,
    PRIMARY KEY (node, device)
);
CREATE INDEX allocations_instance ON allocations (instance_id);

-- Each PlaceModel the scheduler accepted. `seq` is the order in line.
--   waiting    in the queue for its GPU type
--   placed     instances created, GPUs allocated
--   cancelled  stopped or terminated while waiting
--   rejected   could never fit the inventory
CREATE TABLE requests (
    id          TEXT PRIMARY KEY,          -- the PlaceModel command's id
    seq         BIGSERIAL UNIQUE,
    model_id    TEXT NOT NULL,
    version     INTEGER NOT NULL,
    gpu_type    TEXT,
    gpu_count   INTEGER NOT NULL,
    instances   INTEGER NOT NULL,
    command     JSONB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('waiting', 'placed', 'cancelled', 'rejected')),
    position    INTEGER,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX requests_waiting ON requests (seq) WHERE state = 'waiting';
CREATE INDEX requests_model ON requests (model_id, version);

-- Usage metering: one row per run of an instance, closed when the run ends.
CREATE TABLE runs (
    instance_id  TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    model_id     TEXT NOT NULL,
    version      INTEGER NOT NULL,
    gpu_count    INTEGER NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    PRIMARY KEY (instance_id, generation)
);
CREATE INDEX runs_open ON runs (instance_id) WHERE ended_at IS NULL;
