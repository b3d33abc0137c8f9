-- Conversations and messages (PostgreSQL). Keep in step with ../sqlite/.
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    title TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
-- "My conversations", newest first.
CREATE INDEX conversation_members_user ON conversation_members (client_id, user_id, conversation_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    sender_id TEXT NOT NULL,
    body TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- A retry with the same client_msg_id stores nothing twice.
    UNIQUE (conversation_id, sender_id, client_msg_id)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
