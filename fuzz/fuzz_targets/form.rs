//! The token endpoint's request parsing (`server::form`): the form body,
//! the Content-Type check and client authentication (Basic or form
//! parameters). Input layout: `<content-type>\n<authorization>\n<body>`;
//! either header line may be empty (then the header is absent).
#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use m2m_operator::server::form::{AuthMethod, Form, check_content_type, client_credentials};

fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (content_type, rest) = line(data);
    let (authorization, body) = line(rest);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::AUTHORIZATION, authorization),
    ] {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(value)
        {
            headers.insert(name, v);
        }
    }
    let _ = check_content_type(&headers);
    let form = match Form::parse(body) {
        Ok(form) => form,
        Err(e) => {
            assert_eq!(e.code, "invalid_request");
            assert!(e.status.is_client_error());
            Form::default()
        }
    };
    match client_credentials(&headers, &form) {
        Ok(Some(c)) => {
            // Exactly one authentication method was used, and its secret
            // never shows up in Debug output.
            match c.method {
                AuthMethod::Post => {
                    assert!(!headers.contains_key(header::AUTHORIZATION));
                    assert_eq!(form.get("client_secret"), Some(c.client_secret.as_str()));
                }
                AuthMethod::Basic => assert_eq!(form.get("client_secret"), None),
            }
            let mut other = c.clone();
            other.client_secret.push('x');
            assert_eq!(
                format!("{c:?}"),
                format!("{other:?}"),
                "Debug shows the secret"
            );
        }
        Ok(None) => {}
        Err(e) => assert!(e.status.is_client_error(), "{e:?}"),
    }
});
