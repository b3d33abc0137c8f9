-- CAAS schema (PostgreSQL). Ids are text, times are integer Unix seconds, so the
-- same SQL serves SQLite and PostgreSQL. Keep in step with ../sqlite/.
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Touched by every key rotation: serialises rotations of one tenant.
    keys_changed_at BIGINT NOT NULL
);

CREATE TABLE client_accounts (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX client_accounts_client ON client_accounts (client_id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('primary', 'secondary')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_client ON api_keys (client_id);

CREATE TABLE ip_whitelist (
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    entry TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, entry)
);

CREATE TABLE origin_whitelist (
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    entry TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, entry)
);

CREATE TABLE end_users (
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    name TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, user_id)
);

-- A session is one refresh-token family (SDK) or one dashboard login.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('sdk', 'dashboard')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_subject ON sessions (client_id, subject);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    client_id TEXT,
    actor TEXT,
    action TEXT NOT NULL,
    ip TEXT,
    detail TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_log_client ON audit_log (client_id, id);
