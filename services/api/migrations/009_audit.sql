-- The audit trail: one row per management change (services/api/audit.py). `id` is the cursor:
-- rows are numbered under a transaction-scoped lock held until commit, so ids commit in order and
-- a follower reading `id > last` never skips one that commits late.
CREATE TABLE audit_events (
    id          BIGSERIAL PRIMARY KEY,
    at          DOUBLE PRECISION NOT NULL,
    actor       TEXT NOT NULL,
    model_id    TEXT,
    model_name  TEXT,
    action      TEXT NOT NULL,
    event       BYTEA NOT NULL  -- the pier.events.AuditEvent as published on pier.audit.>
);
CREATE INDEX audit_events_model ON audit_events (model_id, id DESC);
CREATE INDEX audit_events_at ON audit_events (at);

-- A change in flight: written before its handler runs, deleted in the transaction that records its
-- event. The request holds a session advisory lock on `id` meanwhile, so a row whose lock is free
-- belongs to an api that died mid-change, and is recorded from what it says and what is there now.
CREATE TABLE audit_pending (
    id          BIGSERIAL PRIMARY KEY,
    at          DOUBLE PRECISION NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    model_id    TEXT,
    model_ref   TEXT,           -- how to find the model API afterwards (e.g. the name being created)
    before      JSONB NOT NULL,
    fields      JSONB NOT NULL
);
