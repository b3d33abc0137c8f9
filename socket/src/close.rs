//! The one mapping from why a connection ends to its WebSocket close code.

caas_rules::names! {
    /// Why the server closes a connection. Each has its own code so clients can
    /// react (refresh and reconnect, back off, give up); the text is the label
    /// of the closes metric.
    pub enum CloseReason {
        /// The server is shutting down: reconnect elsewhere.
        GoingAway = "going_away",
        /// A frame over 64 KiB.
        TooBig = "too_big",
        /// No frame (not even a pong) for the idle timeout.
        Idle = "idle",
        /// The access token expired and no `refresh` came in time.
        TokenExpired = "token_expired",
        /// A stream of invalid frames.
        InvalidFrames = "invalid_frames",
        /// The session was logged out or revoked.
        SessionRevoked = "session_revoked",
        /// Sending far beyond the per-connection rate limit.
        RateLimited = "rate_limited",
        /// The client does not read fast enough: its send queue filled up.
        SlowConsumer = "slow_consumer",
        /// The end user already has the most connections a node allows them.
        UserConnectionLimit = "user_connection_limit",
        /// The tenant already has the most connections a node allows it.
        TenantConnectionLimit = "tenant_connection_limit",
    }
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::GoingAway => 1001,
            CloseReason::TooBig => 1009,
            CloseReason::Idle => 4000,
            CloseReason::TokenExpired => 4001,
            CloseReason::InvalidFrames => 4002,
            CloseReason::SessionRevoked => 4003,
            CloseReason::RateLimited => 4008,
            CloseReason::SlowConsumer => 4009,
            CloseReason::UserConnectionLimit => 4010,
            CloseReason::TenantConnectionLimit => 4011,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "server going away",
            CloseReason::TooBig => "frame too big",
            CloseReason::Idle => "idle timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::InvalidFrames => "too many invalid frames",
            CloseReason::SessionRevoked => "session revoked",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::SlowConsumer => "client too slow",
            CloseReason::UserConnectionLimit => "too many connections for this user",
            CloseReason::TenantConnectionLimit => "too many connections for this tenant",
        }
    }
}
