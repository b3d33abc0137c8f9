//! One function per policy: what the route's credential must be, and what
//! an allowed request gets (its context, CORS origin, query to strip). The
//! rules themselves are caas-core's and caas-rules'.

use std::net::IpAddr;

use caas_core::context::{AuthType, RequestContext};
use caas_core::jwt::{Audience, Claims};
use caas_core::validate::{Denial, Rejection, Validator};
use caas_rules::policy::Policy;
use caas_rules::request::{self, API_KEY, AUTHORIZATION, TOKEN_PARAM, TokenSource};

use crate::decision::Grant;
use crate::incoming::Incoming;

/// A request whose path, policy and client address passed, to be checked
/// against its policy.
pub struct Attempt<'r, 'a> {
    pub validator: &'r Validator,
    pub req: &'r Incoming<'a>,
    pub client_ip: IpAddr,
    pub now: i64,
}

impl Attempt<'_, '_> {
    pub async fn grant(&self, policy: Policy) -> Result<Grant, Rejection> {
        match policy {
            Policy::Public => Ok(self.public()),
            Policy::ApiKey => self.api_key().await,
            Policy::Refresh => self.refresh().await,
            Policy::Dashboard => self.dashboard().await,
            Policy::EndUser => self.end_user().await,
        }
    }

    /// No credential: the context vouches only for the address and request id.
    fn public(&self) -> Grant {
        Grant::new(RequestContext {
            tenant_id: String::new(),
            user_id: String::new(),
            session_id: String::new(),
            auth_type: AuthType::Anonymous,
            key_id: String::new(),
            client_ip: caas_core::whitelist::canonical_ip(self.client_ip).to_string(),
            request_id: self.req.request_id.clone(),
            token_expires_at: None,
        })
    }

    async fn api_key(&self) -> Result<Grant, Rejection> {
        let key = self.req.header(API_KEY).ok_or(Denial::MissingCredentials)?;
        self.with_api_key(key).await
    }

    async fn with_api_key(&self, key: &str) -> Result<Grant, Rejection> {
        let identity = self.validator.validate_api_key(key, self.client_ip, self.now).await?;
        let mut grant = self.public();
        grant.context.tenant_id = identity.tenant_id;
        grant.context.key_id = identity.key_id;
        grant.context.auth_type = AuthType::ApiKey;
        Ok(grant)
    }

    /// The refresh token travels in the body (auth-api checks it); an API
    /// key or an access token, if sent, is checked here.
    async fn refresh(&self) -> Result<Grant, Rejection> {
        match (self.req.header(API_KEY), self.req.header(AUTHORIZATION)) {
            (Some(key), _) => self.with_api_key(key).await,
            (None, Some(authorization)) => {
                let token = request::bearer(Some(authorization))?;
                let origin = self.req.origin();
                let claims = self.validator.validate_token(token, Audience::Sdk, origin, self.now).await?;
                let mut grant = self.user(claims, AuthType::Jwt);
                grant.cors_origin = origin.map(str::to_string);
                Ok(grant)
            }
            (None, None) => Ok(self.public()),
        }
    }

    async fn dashboard(&self) -> Result<Grant, Rejection> {
        let token = request::bearer(self.req.header(AUTHORIZATION))?;
        let claims = self.validator.validate_token(token, Audience::Dashboard, None, self.now).await?;
        Ok(self.user(claims, AuthType::Dashboard))
    }

    async fn end_user(&self) -> Result<Grant, Rejection> {
        let (token, source) = request::end_user_token(self.req.headers_fn(), self.req.path)?;
        let origin = self.req.origin();
        let claims = self.validator.validate_token(token, Audience::Sdk, origin, self.now).await?;
        let expires_at = claims.exp;
        let mut grant = self.user(claims, AuthType::Jwt);
        // End-user routes serve chat and sockets, which do not use the
        // address; each context header costs Envoy ~2 µs.
        grant.context.client_ip.clear();
        // A socket outlives its upgrade request and must close when its
        // token expires: tell the socket service when.
        if request::is_websocket_upgrade(self.req.header("upgrade")) {
            grant.context.token_expires_at = Some(expires_at);
        }
        grant.cors_origin = origin.map(str::to_string);
        if source == TokenSource::Query {
            grant.strip_query.push(TOKEN_PARAM.to_string());
        }
        Ok(grant)
    }

    /// The context of a token's holder.
    fn user(&self, claims: Claims, auth_type: AuthType) -> Grant {
        let mut grant = self.public();
        grant.context.tenant_id = claims.tid;
        grant.context.user_id = claims.sub;
        grant.context.session_id = claims.sid;
        grant.context.auth_type = auth_type;
        grant
    }
}
