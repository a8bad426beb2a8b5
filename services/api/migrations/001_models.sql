CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    is_admin    BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tokens for the management API; only their SHA-256 is stored.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL REFERENCES users(name),
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used   TIMESTAMPTZ
);

CREATE TABLE models (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    owner            TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    access           TEXT NOT NULL,
    instances        INT NOT NULL,
    workers          INT NOT NULL,
    request_timeout  DOUBLE PRECISION NOT NULL,
    gpu_type         TEXT,
    gpu_count        INT NOT NULL DEFAULT 0,
    latest           INT,
    target           INT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    model_id    TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    number      INT NOT NULL,
    id          TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    entrypoint  JSONB NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    image       TEXT,
    packages    JSONB NOT NULL DEFAULT '[]',
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, number)
);

CREATE TABLE instances (
    instance_id  TEXT PRIMARY KEY,
    model_id     TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    version      INT NOT NULL,
    state        TEXT NOT NULL,
    address      TEXT NOT NULL DEFAULT '',
    reason       TEXT NOT NULL DEFAULT '',
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX instances_model ON instances (model_id, version);
