//! Secrets out of messages: what logs, errors and dead letters may show of a URL.
//!
//! A URL in a pipeline can carry a password (`amqp://app:s3cret@broker`) or a token in its
//! query (`https://hooks.example/x?token=...`, SAS `sig=`). Every message that names a URL
//! shows it through [`url`], which keeps what helps an operator find the endpoint (scheme,
//! user, host, path, the names of query parameters) and masks the rest.

/// `text` with its password and the values of secret-looking query parameters replaced by
/// `***`; unchanged when it holds none.
pub fn url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) => {
            let mut changed = false;
            if parsed.password().is_some() {
                changed |= parsed.set_password(Some("***")).is_ok();
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.iter().any(|(k, _)| is_secret(k)) {
                let masked: Vec<(String, String)> = pairs
                    .into_iter()
                    .map(|(k, v)| match is_secret(&k) {
                        true => (k, "***".to_owned()),
                        false => (k, v),
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(masked);
                changed = true;
            }
            match changed {
                true => parsed.to_string(),
                false => text.to_owned(),
            }
        }
        // Not a URL the parser takes (a template, a typo): still hide any user info.
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &text[..scheme], &text[at + 1..])
            }
            _ => text.to_owned(),
        },
    }
}

/// The credentials in the URL `text`: its password and the values of secret-looking
/// query parameters, as written and decoded. For masking them wherever else they turn up
/// (a server's answer that echoes the request).
pub fn url_secrets(text: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(text) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password() {
        secrets.push(password.to_owned());
        if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
            secrets.push(decoded.into_owned());
        }
    }
    if let Some(query) = parsed.query() {
        for pair in query.split('&') {
            if let Some((name, raw)) = pair.split_once('=')
                && is_secret(name)
            {
                secrets.push(raw.to_owned());
            }
        }
    }
    for (name, value) in parsed.query_pairs() {
        if is_secret(&name) {
            secrets.push(value.into_owned());
        }
    }
    secrets
}

/// Query parameters whose values are credentials (`token`, `access_token`, `sig`, `key`,
/// `api_key`, `password`, `secret`, ...).
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "key",
        "sig",
        "secret",
        "pass",
        "auth",
        "credential",
        "code",
    ]
    .iter()
    .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn passwords_and_secret_parameters_are_masked() {
        assert_eq!(
            url("redis://app:s3cret@cache:6379/0"),
            "redis://app:***@cache:6379/0"
        );
        assert_eq!(
            url("amqps://weir:hunter2@broker.plant:5671/%2f"),
            "amqps://weir:***@broker.plant:5671/%2f"
        );
        assert_eq!(
            url("https://hooks.example/iot?token=abc&site=plant-3&sig=xyz"),
            "https://hooks.example/iot?token=***&site=plant-3&sig=***"
        );
        assert_eq!(
            url("https://api.example/v1?api_key=k1&Access_Token=t1"),
            "https://api.example/v1?api_key=***&Access_Token=***"
        );
        assert_eq!(url("not a url://u:p@host"), "not a url://***@host");
    }

    #[test]
    fn the_secrets_of_a_url_are_found_raw_and_decoded() {
        let secrets = super::url_secrets("https://u:p%40ss@h/x?token=a%2Bb&site=3");
        for wanted in ["p%40ss", "p@ss", "a%2Bb", "a+b"] {
            assert!(secrets.iter().any(|s| s == wanted), "{wanted}: {secrets:?}");
        }
        assert!(!secrets.iter().any(|s| s == "3"));
    }

    #[test]
    fn urls_without_secrets_are_left_exactly_as_written() {
        for plain in [
            "redis://cache:6379",
            "https://hooks.example/iot?site=plant-3",
            "amqp://broker",
            "https://HOOKS.example",
        ] {
            assert_eq!(url(plain), plain);
        }
    }
}
