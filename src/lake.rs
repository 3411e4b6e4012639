//! What the `delta_lake` sink and source share about reaching a Delta table: its URL from
//! the `uri` setting, the schemes weir can reach, and teaching deltalake those schemes.
//! (A leaf library: it names no component.)

use std::path::PathBuf;

use url::Url;

use crate::config::RedactedUrl;

/// The schemes a table URI may have: local directories, S3 and Azure Blob Storage.
pub const SCHEMES: &[&str] = &["file", "s3", "s3a", "az", "abfs", "abfss"];

/// The table's URL; a plain path (relative ones against the working directory) is a local
/// directory.
pub fn table_url(uri: &RedactedUrl) -> Result<Url, String> {
    match Url::parse(uri.expose_str()) {
        Ok(url) if url.scheme().len() > 1 => Ok(url),
        // `C:\...` parses with a one-letter scheme; a path without a scheme fails.
        _ => {
            let path = PathBuf::from(uri.expose_str());
            let path = match path.is_absolute() {
                true => path,
                false => std::env::current_dir()
                    .map_err(|err| format!("cannot resolve a relative path: {err}"))?
                    .join(path),
            };
            Url::from_directory_path(&path)
                .map_err(|()| format!("`{uri}` is not a usable directory path"))
        }
    }
}

/// What is wrong with `uri` as a table URI, if anything.
pub fn check_uri(uri: &RedactedUrl) -> Option<String> {
    match table_url(uri) {
        Ok(url) if !SCHEMES.contains(&url.scheme()) => Some(format!(
            "expected a file://, s3:// or az:// URI or a local path, found scheme `{}`",
            url.scheme()
        )),
        Ok(_) => None,
        Err(message) => Some(message),
    }
}

/// Teaches deltalake the `s3://` and `az://` schemes. Its crate registers them from a
/// constructor at load time, which a linker may drop; registering again is harmless.
pub fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::azure::register_handlers(None);
    });
}
