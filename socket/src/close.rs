//! The one mapping from why a connection ends to its WebSocket close code.

/// Why the server closes a connection. Each has its own code so clients can
/// react (refresh and reconnect, back off, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is shutting down: reconnect elsewhere.
    GoingAway,
    /// A frame over 64 KiB.
    TooBig,
    /// No frame (not even a pong) for the idle timeout.
    Idle,
    /// The access token expired and no `refresh` came in time.
    TokenExpired,
    /// A stream of invalid frames.
    InvalidFrames,
    /// The session was logged out or revoked.
    SessionRevoked,
    /// Sending far beyond the per-connection rate limit.
    RateLimited,
    /// The client does not read fast enough: its send queue filled up.
    SlowConsumer,
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
        }
    }

    /// Label for the closes metric.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "going_away",
            CloseReason::TooBig => "too_big",
            CloseReason::Idle => "idle",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::InvalidFrames => "invalid_frames",
            CloseReason::SessionRevoked => "session_revoked",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::SlowConsumer => "slow_consumer",
        }
    }
}
