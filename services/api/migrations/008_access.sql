-- Access: users with e-mail and a disabled flag (and, for the dashboard, a password's argon2id hash),
-- organizations, collaborators of model APIs, and visibility. Existing model APIs become private and
-- keep their owner; the admin stays the admin.
ALTER TABLE users ADD COLUMN email TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- An API key's public prefix (`pier_<prefix>_<secret>`) lets the gateway find its hash in one lookup
-- (bucket pier_keys); the admin token from settings has none and is never called with.
ALTER TABLE api_tokens ADD COLUMN prefix TEXT UNIQUE;

CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE org_members (
    org         TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
    user_name   TEXT NOT NULL REFERENCES users(name),
    PRIMARY KEY (org, user_name)
);
CREATE INDEX org_members_user ON org_members (user_name);

-- principal: a user's name, or `org:NAME` (every member of the organization gets the role).
CREATE TABLE collaborators (
    model_id    TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    principal   TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'editor')),
    added_by    TEXT NOT NULL,
    added_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, principal)
);
CREATE INDEX collaborators_principal ON collaborators (principal);

ALTER TABLE models ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private';

-- Dashboard sessions: only the SHA-256 of the cookie's value and of the CSRF token are kept.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL REFERENCES users(name),
    csrf_hash   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);
