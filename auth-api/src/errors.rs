//! The one place credential use-case errors become HTTP answers (status,
//! code, field, message, `retry-after`).

use caas_core::credentials::CredentialError;
use caas_http::ApiError;

pub(crate) fn api_error(error: CredentialError) -> ApiError {
    let message = error.to_string();
    match error {
        CredentialError::InvalidClientName | CredentialError::InvalidEndUserName => {
            ApiError::invalid("invalid_name", "name", message)
        }
        CredentialError::InvalidEmail => ApiError::invalid("invalid_email", "email", message),
        CredentialError::InvalidPassword(_) => ApiError::invalid("invalid_password", "password", message),
        CredentialError::InvalidNewPassword(_) => ApiError::invalid("invalid_password", "new_password", message),
        CredentialError::WrongCurrentPassword => ApiError::forbidden("invalid_current_password", message),
        CredentialError::GraceTooLong => ApiError::invalid("invalid_grace_seconds", "grace_seconds", message),
        CredentialError::InvalidTestAccessTtl(_) => {
            ApiError::invalid("invalid_access_ttl", "access_ttl_seconds", message)
        }
        CredentialError::InvalidUserId | CredentialError::ReservedUserId => {
            ApiError::invalid("invalid_user_id", "user_id", message)
        }
        CredentialError::MetadataTooLarge | CredentialError::MetadataNotObject => {
            ApiError::invalid("invalid_metadata", "metadata", message)
        }
        CredentialError::InvalidWhitelistEntry(entry) => entry.into(),
        CredentialError::Throttled(limit) => limit.into(),
        CredentialError::WrongPassword => ApiError::unauthorized("invalid_credentials", message),
        CredentialError::KeyNotFound => ApiError::not_found("api_key_not_found", message),
        CredentialError::InvalidRefreshToken => ApiError::unauthorized("invalid_refresh_token", message),
        CredentialError::RefreshTokenReused => ApiError::unauthorized("refresh_token_reused", message),
        CredentialError::NoSessionNamed => ApiError::unauthorized("missing_credentials", message),
        CredentialError::Overloaded(busy) => ApiError::overloaded(busy.0, message),
        CredentialError::PasswordHashing => ApiError::internal(),
        CredentialError::Store(error) => error.into(),
    }
}
