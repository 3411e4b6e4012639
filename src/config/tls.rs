//! The `tls` options of the language (servers and clients), as a type of the engine so
//! that global settings (`api.tls`) can hold them; what they do is in `crate::tls`.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Certificates and keys for TLS.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain weir presents (a server's own; a client's for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates: a server requires clients to present a certificate they signed
    /// (mutual TLS); a client trusts servers they signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}
