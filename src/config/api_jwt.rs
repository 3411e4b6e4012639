//! `api.auth.jwt`: JWT bearer tokens from an OIDC provider, beside the API tokens.
//!
//! What the admin API checks a JWT against: the issuer and audience it must name, where
//! the signing keys are (a JWKS URL, a JWKS file, or OIDC discovery from the issuer), and
//! how a claim of the token maps to a weir role. The checking is `crate::api::auth::jwt`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Grant, RedactedUrl, RoleBinding};

/// JWT bearer tokens (RS256 or ES256) from an OIDC provider. A bearer token of three
/// dot-separated parts is checked as a JWT; anything else as an API token.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` a token must carry, exactly. Entra ID v2 tokens:
    /// `https://login.microsoftonline.com/{tenant}/v2.0`; v1 tokens:
    /// `https://sts.windows.net/{tenant}/` (with the trailing slash).
    pub issuer: String,
    /// The `aud` a token must carry (for Entra ID the application ID URI or client ID).
    pub audience: String,
    /// The provider's JWKS URL. With neither this nor `jwks_file`, it is read from the
    /// issuer's `/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<RedactedUrl>,
    /// A JWKS file instead of a URL (for providers weir cannot reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The claim that holds the caller's roles (a string or a list of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim value → weir role (`Weir.Operate: operator`), or a role on the devices whose
    /// tags match a scope (`Plant3.Operate: { role: operator, scope: { site: plant-3 } }`).
    /// A token holds every role its values map to. A token with no mapped value gets 403.
    #[serde(default)]
    pub role_map: BTreeMap<String, RoleBinding>,
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}

/// Where the signing keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    Uri(String),
    File(PathBuf),
    /// The `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    Discovery {
        issuer: String,
    },
}

impl JwtConfig {
    /// The grant of each claim value, or why one cannot be given.
    pub fn grants(&self) -> Result<BTreeMap<String, Grant>, String> {
        self.role_map
            .iter()
            .map(|(value, binding)| {
                let grant = binding.grant();
                grant
                    .check()
                    .map(|()| (value.clone(), grant))
                    .map_err(|e| format!("api.auth.jwt.role_map.{value}: {e}"))
            })
            .collect()
    }

    /// The one key source the settings name, or why they name none or two.
    pub fn jwks_source(&self) -> Result<JwksSource, String> {
        match (&self.jwks_uri, &self.jwks_file) {
            (Some(_), Some(_)) => {
                Err("api.auth.jwt: give `jwks_uri` or `jwks_file`, not both".to_owned())
            }
            (Some(uri), None) => Ok(JwksSource::Uri(uri.expose_str().to_owned())),
            (None, Some(file)) => Ok(JwksSource::File(file.clone())),
            (None, None) => Ok(JwksSource::Discovery {
                issuer: self.issuer.clone(),
            }),
        }
    }
}
