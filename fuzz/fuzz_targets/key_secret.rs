//! The operator key Secret parser (`parse_key_secret`, shared by the
//! controller and the token server's `KeyMaterial::from_secret`) on
//! arbitrary Secret contents. Input: a length byte `n` (255: no
//! `verifier-key`), `n` bytes of verifier key, then `signing-keys.json`
//! (absent when empty). Whatever parses builds a key ring or fails cleanly,
//! and round-trips through the Secret the controller writes.
#![no_main]

use chrono::Utc;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use m2m_operator::signing::SigningAlg;
// The parser's home may move (controller → a shared signing store): only
// these two lines name it.
use m2m_operator::signing::store::{KeySecretConfig, desired_secret, parse_key_secret};
use m2m_operator::server::index::KeyMaterial;
use std::collections::BTreeMap;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let mut map = BTreeMap::new();
    let json = if n == 255 {
        rest
    } else {
        let n = usize::from(n).min(rest.len());
        map.insert("verifier-key".to_owned(), ByteString(rest[..n].to_vec()));
        &rest[n..]
    };
    if !json.is_empty() {
        map.insert("signing-keys.json".to_owned(), ByteString(json.to_vec()));
    }
    let mut secret = Secret::default();
    secret.metadata.name = Some("m2m-operator-keys".into());
    secret.data = Some(map);

    let now = Utc::now();
    let material = KeyMaterial::from_secret(&secret, now);
    let Ok((verifier_key, key_set)) = parse_key_secret(&secret) else {
        assert!(
            material.is_err(),
            "the token server accepted what the controller refuses"
        );
        return;
    };
    let cfg = KeySecretConfig::new("ops".into(), SigningAlg::Es256, Duration::from_secs(3600));
    let written = desired_secret(&cfg, &verifier_key, &key_set, None).expect("serialize");
    let (key2, set2) = parse_key_secret(&written).expect("what the controller writes parses");
    assert_eq!(key2, verifier_key);
    assert_eq!(set2, key_set);
});
