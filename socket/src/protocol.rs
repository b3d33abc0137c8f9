//! The frames of `caas.v1`: JSON text frames with a `type`. Documented in
//! docs/API_REFERENCE.md.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The subprotocol the server speaks (and echoes).
pub const SUBPROTOCOL: &str = "caas.v1";

/// What a client may send. `id` is echoed in the `ack` or `error` reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Inbound {
    Subscribe {
        conversation_id: String,
        id: Option<String>,
    },
    Unsubscribe {
        conversation_id: String,
        id: Option<String>,
    },
    Message {
        conversation_id: String,
        body: String,
        client_msg_id: String,
        id: Option<String>,
    },
    Refresh {
        token: String,
        id: Option<String>,
    },
    /// A client acknowledging a delivery (any fields); accepted and ignored.
    #[serde(skip)]
    Ack,
}

const KNOWN: [&str; 5] = ["subscribe", "unsubscribe", "message", "refresh", "ack"];

/// Why an inbound frame could not be understood: an `error` frame, not a disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    InvalidJson,
    UnknownType,
    InvalidFrame,
    BinaryFrame,
}

impl FrameError {
    pub fn code(self) -> &'static str {
        match self {
            FrameError::InvalidJson => "invalid_json",
            FrameError::UnknownType => "unknown_type",
            FrameError::InvalidFrame => "invalid_frame",
            FrameError::BinaryFrame => "binary_not_supported",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            FrameError::InvalidJson => "frame is not valid JSON",
            FrameError::UnknownType => "unknown frame type",
            FrameError::InvalidFrame => "frame is missing fields or has unexpected ones",
            FrameError::BinaryFrame => "only JSON text frames are accepted",
        }
    }
}

pub fn parse(text: &str) -> Result<Inbound, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError::InvalidJson)?;
    match value.get("type").and_then(Value::as_str) {
        Some("ack") => Ok(Inbound::Ack),
        Some(kind) if KNOWN.contains(&kind) => serde_json::from_value(value).map_err(|_| FrameError::InvalidFrame),
        Some(_) => Err(FrameError::UnknownType),
        None => Err(FrameError::InvalidFrame),
    }
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    r#type: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

pub fn error(code: &str, message: &str, id: Option<&str>) -> String {
    serde_json::to_string(&ErrorFrame { r#type: "error", code, message, id }).unwrap_or_default()
}

pub fn ack(of: &str, id: Option<&str>, extra: Value) -> String {
    let mut frame = json!({ "type": "ack", "ref": of });
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    if let (Some(frame), Value::Object(extra)) = (frame.as_object_mut(), extra) {
        frame.extend(extra);
    }
    frame.to_string()
}

/// A stored message as delivered to subscribers (serialized once per message).
pub fn message(conversation_id: &str, message: &caas_core::message::Message) -> String {
    json!({ "type": "message", "conversation_id": conversation_id, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_say_why_not() {
        assert!(matches!(parse(r#"{"type":"subscribe","conversation_id":"c1"}"#), Ok(Inbound::Subscribe { .. })));
        assert!(matches!(parse(r#"{"type":"ack","message_id":"m1"}"#), Ok(Inbound::Ack)));
        assert_eq!(parse("not json").unwrap_err(), FrameError::InvalidJson);
        assert_eq!(parse(r#"{"type":"explode"}"#).unwrap_err(), FrameError::UnknownType);
        assert_eq!(parse(r#"{"conversation_id":"c1"}"#).unwrap_err(), FrameError::InvalidFrame);
        assert_eq!(parse(r#"{"type":"subscribe"}"#).unwrap_err(), FrameError::InvalidFrame);
        assert_eq!(
            parse(r#"{"type":"subscribe","conversation_id":"c1","admin":true}"#).unwrap_err(),
            FrameError::InvalidFrame
        );
        assert_eq!(parse(r#"[1,2]"#).unwrap_err(), FrameError::InvalidFrame);
    }

    #[test]
    fn replies_echo_the_id() {
        let ack: Value = serde_json::from_str(&ack("subscribe", Some("7"), json!({"conversation_id": "c1"}))).unwrap();
        assert_eq!(ack, json!({"type": "ack", "ref": "subscribe", "id": "7", "conversation_id": "c1"}));
        let error: Value = serde_json::from_str(&error("rate_limited", "slow down", None)).unwrap();
        assert_eq!(error, json!({"type": "error", "code": "rate_limited", "message": "slow down"}));
    }
}
