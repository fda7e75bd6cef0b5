//! A connection or subscription token, as a client sends it. Nothing may panic, and a token is
//! accepted only if it carries an HMAC of its header and claims made with the verifier's secret:
//! checked here with the `hmac` crate, apart from the code under test.
#![no_main]

use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use switchboard::auth::TokenVerifier;

/// The secret the seed tokens in `corpus/token` that should pass were signed with.
const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = TokenVerifier::hmac(SECRET);
    let connection = verifier.verify_connection(token).is_ok();
    let subscription = verifier.verify_subscription(token).is_ok();
    if connection || subscription {
        assert!(
            signed_with_secret(token),
            "accepted a token not signed with the key: {token:?}"
        );
    }
});

/// Whether `token` is `header.claims.signature` with the signature an HS256/384/512 HMAC, by
/// `SECRET`, of `header.claims`, for the algorithm its header names.
fn signed_with_secret(token: &str) -> bool {
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((header, _)) = signing_input.split_once('.') else {
        return false;
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Ok(header), Ok(signature)) = (b64.decode(header), b64.decode(signature)) else {
        return false;
    };
    let Ok(header) = std::str::from_utf8(&header) else {
        return false;
    };
    // The header's `alg` is what the verifier went by; each HMAC size is checked in turn.
    let names = |alg: &str| header.contains(&format!("\"{alg}\""));
    let key = SECRET.as_bytes();
    let input = signing_input.as_bytes();
    (names("HS256") && check::<Hmac<sha2::Sha256>>(key, input, &signature))
        || (names("HS384") && check::<Hmac<sha2::Sha384>>(key, input, &signature))
        || (names("HS512") && check::<Hmac<sha2::Sha512>>(key, input, &signature))
}

fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(input);
    mac.verify_slice(signature).is_ok()
}
