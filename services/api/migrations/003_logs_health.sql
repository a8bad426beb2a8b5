-- Build, instance and deployment logs, folded from the PIER_LOGS stream. `seq` is the line's
-- stream sequence: it orders the lines, is the paging cursor, and makes a redelivery a no-op.
CREATE TABLE logs (
    seq          BIGINT PRIMARY KEY,
    model_id     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('build', 'instance', 'deployment')),
    version      INT,
    instance_id  TEXT,
    at           DOUBLE PRECISION NOT NULL,
    line         TEXT NOT NULL
);
CREATE INDEX logs_model ON logs (model_id, seq DESC);
CREATE INDEX logs_model_kind ON logs (model_id, kind, seq DESC);
CREATE INDEX logs_at ON logs (at);

-- The health-check policy (pier.events.HealthPolicy as JSON; '{}' means every default).
ALTER TABLE models ADD COLUMN health JSONB NOT NULL DEFAULT '{}';

-- A rolling restart after a settings change: the instances still to restart, one at a time.
-- `rollout_current` is the one restarting now; the next goes once it is ready again.
ALTER TABLE models ADD COLUMN rollout_pending TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE models ADD COLUMN rollout_current TEXT;
