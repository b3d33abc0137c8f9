-- A tenant's quotas (PostgreSQL). Keep in step with ../sqlite/.
-- No row: the defaults (caas_rules::quota::DEFAULT_LIMITS, rules/src/quota.rs).
CREATE TABLE rate_limits (
    client_id TEXT PRIMARY KEY REFERENCES clients(id) ON DELETE CASCADE,
    key_rate BIGINT NOT NULL,
    key_burst BIGINT NOT NULL,
    user_rate BIGINT NOT NULL,
    user_burst BIGINT NOT NULL,
    tenant_rate BIGINT NOT NULL,
    tenant_burst BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
