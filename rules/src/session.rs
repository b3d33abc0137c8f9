//! Whether the session behind a verified token is live and is the one the
//! token names. ext-authz reads the session from its store (through its
//! caches); the in-proxy filter (edge-wasm/) from ext-authz's feed. Both
//! judge it here.

use crate::denial::Denial;
use crate::jwt::{Audience, Claims};

/// A session as a verifier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView<'a> {
    pub tenant_id: &'a str,
    pub subject: &'a str,
    /// The audience whose tokens the session backs; `None` matches nothing
    /// (a revocation known before the session itself).
    pub audience: Option<Audience>,
    pub revoked: bool,
}

/// A token passes only with a live session of its own tenant, subject and
/// audience; an unknown session (`None`) is refused like a revoked one.
pub fn check(claims: &Claims, audience: Audience, session: Option<&SessionView<'_>>) -> Result<(), Denial> {
    let session = session.ok_or(Denial::SessionRevoked)?;
    if session.revoked
        || session.tenant_id != claims.tid
        || session.subject != claims.sub
        || session.audience != Some(audience)
    {
        return Err(Denial::SessionRevoked);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "caas".into(),
            aud: Audience::Sdk.as_str().into(),
            sub: "u1".into(),
            tid: "cl_1".into(),
            sid: "ses_1".into(),
            jti: "j".into(),
            iat: 0,
            exp: 900,
            nbf: None,
        }
    }

    #[test]
    fn only_a_live_session_of_the_same_tenant_subject_and_audience_passes() {
        let live = SessionView { tenant_id: "cl_1", subject: "u1", audience: Some(Audience::Sdk), revoked: false };
        assert_eq!(check(&claims(), Audience::Sdk, Some(&live)), Ok(()));
        let refused = [
            SessionView { revoked: true, ..live.clone() },
            SessionView { tenant_id: "cl_2", ..live.clone() },
            SessionView { subject: "u2", ..live.clone() },
            SessionView { audience: Some(Audience::Dashboard), ..live.clone() },
            SessionView { audience: None, ..live.clone() },
        ];
        for session in refused {
            assert_eq!(check(&claims(), Audience::Sdk, Some(&session)), Err(Denial::SessionRevoked), "{session:?}");
        }
        assert_eq!(check(&claims(), Audience::Sdk, None), Err(Denial::SessionRevoked));
    }
}
