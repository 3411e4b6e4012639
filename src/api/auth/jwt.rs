//! Checking a JWT bearer token (`api.auth.jwt`).
//!
//! A token is accepted only if its header names RS256 or ES256 and a `kid` of the JWKS,
//! the key is for that same algorithm (so `alg: none` and an HS256 token "signed" with
//! the RSA public key are refused), the signature holds, and `exp`, `nbf`, `iss` and
//! `aud` hold with [`LEEWAY_SECONDS`] of clock skew. It is granted what `role_map` gives
//! each value of `roles_claim` (a role, maybe scoped to devices by tag); its name, for the audit log, is the
//! first of `name`, `preferred_username` and `sub`.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use crate::config::{Grant, JwtConfig};

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;

/// Whether a bearer token is shaped like a JWT (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Why a JWT was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum JwtRejection {
    /// 401: not a JWT weir can check, or one that fails a check.
    Invalid(&'static str),
    /// 403: a valid token whose claims map to no role.
    NoRole { caller: String },
}

/// A JWT's caller.
#[derive(Debug, PartialEq, Eq)]
pub struct JwtCaller {
    pub name: String,
    pub grants: Vec<Grant>,
}

/// The checker of one `api.auth.jwt`.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    roles_claim: String,
    role_map: BTreeMap<String, Grant>,
    jwks: Jwks,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            roles_claim: config.roles_claim.clone(),
            role_map: config.grants()?,
            jwks: Jwks::new(config.jwks_source()?)?,
        })
    }

    pub async fn verify(&self, token: &str) -> Result<JwtCaller, JwtRejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtRejection::Invalid("jwt_malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtRejection::Invalid("jwt_algorithm"));
        }
        let kid = header.kid.ok_or(JwtRejection::Invalid("jwt_no_kid"))?;
        let key = self
            .jwks
            .key(&kid)
            .await
            .ok_or(JwtRejection::Invalid("jwt_unknown_kid"))?;
        if key.algorithm != header.alg {
            return Err(JwtRejection::Invalid("jwt_algorithm"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| JwtRejection::Invalid(reason(&e)))?
            .claims;
        let name = identity(&claims).ok_or(JwtRejection::Invalid("jwt_no_subject"))?;
        match self.grants(&claims) {
            grants if grants.is_empty() => Err(JwtRejection::NoRole { caller: name }),
            grants => Ok(JwtCaller { name, grants }),
        }
    }

    /// What the values of `roles_claim` map to.
    fn grants(&self, claims: &Map<String, Value>) -> Vec<Grant> {
        let values: Vec<&str> = match claims.get(&self.roles_claim) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter_map(|value| self.role_map.get(value).cloned())
            .collect()
    }
}

/// Who the token is, for the audit log: `name`, `preferred_username` or `sub`.
fn identity(claims: &Map<String, Value>) -> Option<String> {
    ["name", "preferred_username", "sub"]
        .iter()
        .find_map(|claim| claims.get(*claim)?.as_str().filter(|s| !s.is_empty()))
        .map(str::to_owned)
}

/// The metric reason of a failed check.
fn reason(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "jwt_expired",
        ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
        ErrorKind::InvalidIssuer => "jwt_issuer",
        ErrorKind::InvalidAudience => "jwt_audience",
        ErrorKind::InvalidSignature => "jwt_signature",
        ErrorKind::InvalidAlgorithm => "jwt_algorithm",
        ErrorKind::MissingRequiredClaim(_) => "jwt_missing_claim",
        _ => "jwt_invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_part_tokens_are_jwts() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("weir_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }

    #[test]
    fn the_caller_is_named_by_name_then_username_then_sub() {
        let claims = |v: Value| v.as_object().cloned().unwrap_or_default();
        let all =
            claims(serde_json::json!({"name": "Ann", "preferred_username": "ann@x", "sub": "1"}));
        assert_eq!(identity(&all).as_deref(), Some("Ann"));
        let two = claims(serde_json::json!({"preferred_username": "ann@x", "sub": "1"}));
        assert_eq!(identity(&two).as_deref(), Some("ann@x"));
        let one = claims(serde_json::json!({"sub": "1"}));
        assert_eq!(identity(&one).as_deref(), Some("1"));
    }
}
