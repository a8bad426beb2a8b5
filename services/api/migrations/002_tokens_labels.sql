-- Access tokens of model APIs: only the SHA-256 of the secret is kept; `id` is the token's
-- public prefix, which is also how the gateway looks a token up (bucket pier_tokens).
CREATE TABLE model_tokens (
    id          TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used   TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX model_tokens_model ON model_tokens (model_id);

-- Labels (e.g. prod) point at a version; in routing mode advanced they serve beside `latest`.
CREATE TABLE labels (
    model_id    TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    label       TEXT NOT NULL,
    version     INT NOT NULL,
    promoted_by TEXT NOT NULL,
    promoted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, label)
);

ALTER TABLE models ADD COLUMN routing_mode TEXT NOT NULL DEFAULT 'basic';
