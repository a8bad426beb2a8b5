-- Logs are kept as they travel: one row per message (a LogBatch of instance lines, or one build or
-- deployment line), so a busy instance costs PostgreSQL a row per batch, not one per call.
-- Line n (from 0) of a row is numbered seq + n, and seq is the message's stream sequence x 65536
-- (pier.events.LOG_BATCH_MAX): the numbers order the lines, page them, and make a redelivery a no-op.
CREATE TABLE log_batches (
    seq          BIGINT PRIMARY KEY,
    model_id     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('build', 'instance', 'deployment')),
    version      INT,
    instance_id  TEXT,
    at           DOUBLE PRECISION NOT NULL,
    lines        TEXT[] NOT NULL
);
CREATE INDEX log_batches_model ON log_batches (model_id, seq DESC);
CREATE INDEX log_batches_model_kind ON log_batches (model_id, kind, seq DESC);
CREATE INDEX log_batches_at ON log_batches (at);

INSERT INTO log_batches (seq, model_id, kind, version, instance_id, at, lines)
    SELECT seq * 65536, model_id, kind, version, instance_id, at, ARRAY[line] FROM logs;
DROP TABLE logs;
