//! The access-token parsing path (`signing::KeyRing::verify`, used by
//! introspection and revocation) on arbitrary input. The first byte picks
//! a mode:
//! - 0: the rest is tried as a compact JWS as it is;
//! - 1: the rest is `<header JSON>.<claims>.<signature>`, with `$ES256`,
//!   `$EDDSA`, `$RS256` in the header replaced by the ring's key ids and the
//!   header base64url-encoded, so the fuzzer reaches the signature check;
//! - 2: the rest is signed as claims by the active key: the token must
//!   verify to exactly those claims, and with any byte of it changed, must not.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use m2m_operator::signing::SigningAlg;
use m2m_operator::signing::{KeyRing, KeySet, generate_key};
use std::sync::OnceLock;

struct Fixture {
    ring: KeyRing,
    kids: Vec<(&'static str, String)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = Utc::now();
        let earlier = now - chrono::Duration::hours(1);
        let mut keys = Vec::new();
        let mut kids = Vec::new();
        // RS256 and EdDSA retired (still published), ES256 active.
        for (alg, name) in [
            (SigningAlg::Rs256, "$RS256"),
            (SigningAlg::EdDsa, "$EDDSA"),
            (SigningAlg::Es256, "$ES256"),
        ] {
            let mut key = generate_key(alg, earlier).expect("generate key");
            if alg != SigningAlg::Es256 {
                key.retired_at = Some(now);
            } else {
                key.created_at = now;
            }
            kids.push((name, key.kid.clone()));
            keys.push(key);
        }
        let set = KeySet {
            keys,
            ..KeySet::default()
        };
        Fixture {
            ring: KeyRing::new(&set, now).expect("key ring"),
            kids,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = f.ring.verify(token);
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let (header, tail) = text.split_once('.').unwrap_or((text, ""));
            let mut header = header.to_owned();
            for (name, kid) in &f.kids {
                header = header.replace(name, kid);
            }
            let token = format!("{}.{tail}", URL_SAFE_NO_PAD.encode(header));
            let _ = f.ring.verify(&token);
        }
        _ => {
            let signer = f.ring.active().expect("active key");
            let token = signer.sign(rest).expect("sign");
            let verified = f.ring.verify(&token).expect("a token it signed verifies");
            assert_eq!(verified.claims_json, rest);
            assert_eq!(verified.kid, signer.kid());
            // Change one byte (chosen by the claims' length) to another
            // base64url character: the token must no longer verify.
            let mut bytes = token.into_bytes();
            let i = rest.len() % bytes.len();
            if bytes[i] != b'.' {
                let b = bytes[i];
                bytes[i] = if b == b'A' { b'B' } else { b'A' };
                let tampered = String::from_utf8(bytes).expect("ascii");
                if let Some(v) = f.ring.verify(&tampered) {
                    // Base64url's last character may carry unused bits:
                    // then the decoded bytes are the same and so is the claim.
                    assert_eq!(v.claims_json, rest, "tampered token verified: {tampered}");
                }
            }
        }
    }
});
