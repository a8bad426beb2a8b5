-- Transactional outbox and inbox, created in every service schema that owns PostgreSQL state.
CREATE TABLE outbox (
    seq      BIGSERIAL PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    subject  TEXT NOT NULL,
    payload  BYTEA NOT NULL,
    headers  JSONB NOT NULL DEFAULT '{}'
);
CREATE TABLE inbox (
    id       TEXT PRIMARY KEY,
    handled  TIMESTAMPTZ NOT NULL DEFAULT now()
);
