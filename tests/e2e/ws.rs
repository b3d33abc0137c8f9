//! A WebSocket client for the tests (tokio-tungstenite, as the server uses).

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

pub type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Ws {
    stream: Stream,
    pub protocol: Option<String>,
}

/// What the server did next.
#[derive(Debug, PartialEq)]
pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
    Nothing,
}

/// Connects to `url` (ws://…/v1/ws) with the token in the `caas.bearer.`
/// subprotocol; `Err((status, body))` when refused before 101.
pub async fn connect(url: &str, token: Option<&str>, origin: Option<&str>) -> Result<Ws, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    let protocols = match token {
        Some(token) => format!("caas.v1, caas.bearer.{token}"),
        None => "caas.v1".into(),
    };
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
    {
        Ok((stream, response)) => {
            let protocol =
                response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(String::from);
            Ok(Ws { stream, protocol })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(other) => panic!("connect failed: {other}"),
    }
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::text(frame.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        let _ = self.stream.send(message).await;
    }

    /// The next text frame or close within `within` (pings are skipped).
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, self.stream.next()).await {
                Err(_) => return Next::Nothing,
                Ok(None) => return Next::Closed(None),
                Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => return Next::Frame(serde_json::from_str(&text).unwrap()),
                Ok(Some(Ok(Message::Close(frame)))) => return Next::Closed(frame.map(|f| u16::from(f.code))),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame, which must be JSON of `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        match self.next(Duration::from_secs(5)).await {
            Next::Frame(frame) if frame["type"] == kind => frame,
            other => panic!("expected a {kind} frame, got {other:?}"),
        }
    }

    /// Subscribes and waits for the ack.
    pub async fn subscribe(&mut self, conversation_id: &str) {
        self.send(serde_json::json!({"type": "subscribe", "conversation_id": conversation_id})).await;
        let ack = self.expect("ack").await;
        assert_eq!(ack["ref"], "subscribe", "{ack}");
    }

    /// Waits for the server to close the connection; returns its code.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                Next::Closed(code) => return code,
                Next::Nothing => panic!("still open after {within:?}"),
                Next::Frame(_) => continue,
            }
        }
    }
}
