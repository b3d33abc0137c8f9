-- The change feed (PostgreSQL). Keep in step with ../sqlite/.
-- Every credential change (revocation, key, whitelist, quota) is written here
-- in the same transaction as the change itself; every process reads it on a
-- short period (core/src/feed.rs), so a change reaches every cache even when
-- the event bus lost it. Rows are purged after a day (core/src/retention.rs).
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    event TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX changes_created_at ON changes (created_at);

-- A whitelist's version: raised by every replace, carried by its change event
-- and by the shared-cache copy, so a stale shared copy is detected.
CREATE TABLE whitelist_versions (
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (client_id, kind)
);

-- The retention job (core/src/retention.rs) deletes by these, in batches.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX audit_log_created_at ON audit_log (created_at);
