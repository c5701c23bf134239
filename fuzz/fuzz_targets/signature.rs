//! The signature header parser and verifier: no panic on any input, and an
//! accept only when a `v1` really is the MAC of the content.
#![no_main]

use arbitrary::Arbitrary;
use cariosan_webhooks::verify::{Secret, Verifier};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

#[derive(Arbitrary, Debug)]
enum Header {
    /// Any bytes as the header.
    Raw(Vec<u8>),
    /// A header built from parts: the true MAC, maybe damaged.
    Built {
        t: u64,
        extra_secrets: u8,
        damage: Damage,
        decoys: Vec<[u8; 32]>,
        uppercase: bool,
    },
}

#[derive(Arbitrary, Debug, PartialEq)]
enum Damage {
    None,
    FlipBit(u8),
    Truncate(u8),
    Extend(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    id: String,
    body: Vec<u8>,
    now: i64,
    header: Header,
}

fn true_mac(secret: &[u8], id: &str, t: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fuzz_target!(|input: Input| {
    let Ok(verifier) = Verifier::new(&input.secret) else {
        assert!(input.secret.is_empty());
        return;
    };
    match input.header {
        Header::Raw(raw) => {
            let Ok(header) = std::str::from_utf8(&raw) else { return };
            if let Ok(verified) = verifier.verify_at(input.now, &input.id, header, &input.body) {
                // Accepted: the header must carry the true MAC for its t.
                let t = verified.timestamp().to_string();
                let mac = hex::encode(true_mac(&input.secret, &input.id, &t, &input.body));
                assert!(header.to_ascii_lowercase().contains(&mac), "accepted without the true MAC: {header:?}");
            }
        }
        Header::Built { t, extra_secrets, damage, decoys, uppercase } => {
            let t = t % (i64::MAX as u64);
            let t_text = t.to_string();
            let mut mac = hex::encode(true_mac(&input.secret, &input.id, &t_text, &input.body));
            match damage {
                Damage::None => {}
                Damage::FlipBit(bit) => {
                    let mut bytes = hex::decode(&mac).unwrap();
                    bytes[usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
                    mac = hex::encode(bytes);
                }
                Damage::Truncate(n) => mac.truncate(usize::from(n) % 64),
                Damage::Extend(n) => mac.push(char::from(b'0' + n % 10)),
            }
            if uppercase {
                mac = mac.to_uppercase();
            }
            let mut header = format!("t={t_text}");
            for decoy in decoys.iter().take(4) {
                header.push_str(&format!(",v1={}", hex::encode(decoy)));
            }
            header.push_str(&format!(",v1={mac}"));
            let mut verifier = verifier;
            for i in 0..extra_secrets % 3 {
                verifier = verifier.with_secret(Secret::new(format!("whsec_extra_{i}")).unwrap());
            }
            let verdict = verifier.verify_at(input.now, &input.id, &header, &input.body);
            let id_ok = cariosan_webhooks::protocol::is_valid_delivery_id(&input.id);
            let fresh = (i128::from(input.now) - t as i128).abs() <= 300;
            let decoy_hits = decoys.iter().take(4).any(|d| {
                *d == true_mac(&input.secret, &input.id, &t_text, &input.body)
            });
            let expect = id_ok && fresh && (damage == Damage::None || decoy_hits);
            assert_eq!(verdict.is_ok(), expect, "{header:?} now={} -> {verdict:?}", input.now);
        }
    }
});
