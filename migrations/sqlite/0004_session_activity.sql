-- Where and when a session was last used, for the dashboard's session list
-- (SQLite). Keep in step with ../postgres/. Written at sign-in and at most once a
-- minute per session after (core/src/credentials.rs), never per request.
-- Lists and bulk revocations use sessions_subject (client_id, subject).
ALTER TABLE sessions ADD COLUMN last_used_at BIGINT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
