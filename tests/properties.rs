//! Properties of the verifier over arbitrary secrets, ids, timestamps and
//! bodies (non-UTF-8 and multibyte included).

use std::time::Duration;

use cariosan_webhooks::verify::{sign, Secret, Verifier, VerifyError};
use proptest::prelude::*;

fn secret_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..80)
}

fn delivery_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,128}"
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        any::<String>().prop_map(String::into_bytes),
        "[\\PC🚚ñ漢字 ]{0,200}".prop_map(String::into_bytes),
    ]
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![0..=i64::MAX, 1_700_000_000i64..1_900_000_000]
}

fn verifier(secret: &[u8], now: i64) -> Verifier {
    Verifier::new(secret).unwrap().clock(move || now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sign_then_verify_round_trips(secret in secret_bytes(), id in delivery_id(), t in timestamp(), body in body(), skew in -300i64..=300) {
        let header = sign(&[Secret::new(&secret).unwrap()], &id, t, &body);
        let now = t.saturating_add(skew);
        let verified = verifier(&secret, now).verify(&id, &header, &body);
        prop_assert!(verified.is_ok(), "{:?}", verified);
        prop_assert_eq!(verified.unwrap().timestamp(), t);
    }

    #[test]
    fn any_flipped_bit_is_rejected(secret in secret_bytes(), id in delivery_id(), t in 1_700_000_000i64..1_900_000_000, body in body(), which in 0usize..4, bit in any::<usize>()) {
        let header = sign(&[Secret::new(&secret).unwrap()], &id, t, &body);
        let (mut id, mut header, mut body) = (id.into_bytes(), header.into_bytes(), body);
        let flip = |bytes: &mut Vec<u8>, from: usize| {
            let span = bytes.len() - from;
            let at = from + bit % span;
            bytes[at] ^= 1 << (bit / span % 8);
        };
        match which {
            0 if !body.is_empty() => flip(&mut body, 0),
            1 => flip(&mut id, 0),
            2 => {
                let t_end = header.iter().position(|&b| b == b',').unwrap();
                let t_text = header[2..t_end].to_vec();
                let mut t_flipped = t_text.clone();
                flip(&mut t_flipped, 0);
                header.splice(2..t_end, t_flipped);
            }
            _ => {
                // The MAC is 32 bytes; its hex text is case-insensitive, so
                // flip a bit of the bytes, not of the text.
                let mac_start = header.len() - 64;
                let mut mac = hex::decode(&header[mac_start..]).unwrap();
                flip(&mut mac, 0);
                header.truncate(mac_start);
                header.extend_from_slice(hex::encode(mac).as_bytes());
            }
        }
        let (Ok(id), Ok(header)) = (String::from_utf8(id), String::from_utf8(header)) else {
            // A flip that leaves ASCII cannot reach verify as text: rejected
            // before the verifier by any HTTP stack.
            return Ok(());
        };
        let verdict = verifier(&secret, t).verify(&id, &header, &body);
        prop_assert!(verdict.is_err(), "flip {} accepted: {:?}", which, header);
    }

    #[test]
    fn rotation_accepts_exactly_when_one_pair_matches(
        id in delivery_id(),
        body in body(),
        held in prop::collection::btree_set(0u8..8, 1..4),
        signed_with in prop::collection::btree_set(0u8..8, 1..4),
    ) {
        let secret = |i: u8| Secret::new(format!("whsec_rotation_{i}")).unwrap();
        let held_list: Vec<u8> = held.iter().copied().collect();
        let mut verifier = Verifier::from_secret(secret(held_list[0])).clock(|| 1_800_000_000);
        for &i in &held_list[1..] {
            verifier = verifier.with_secret(secret(i));
        }
        let signers: Vec<Secret> = signed_with.iter().map(|&i| secret(i)).collect();
        let header = sign(&signers, &id, 1_800_000_000, &body);
        let verdict = verifier.verify(&id, &header, &body);
        if held.is_disjoint(&signed_with) {
            prop_assert_eq!(verdict, Err(VerifyError::NoMatchingSignature));
        } else {
            // The secret reported as matching is one the sender signed with.
            let matched = held_list[verdict.unwrap().secret_index()];
            prop_assert!(signed_with.contains(&matched));
        }
    }

    #[test]
    fn tolerance_edges_are_exact_to_the_second(t in 1_000_000i64..4_000_000_000, tolerance in 0u64..100_000) {
        let header = sign(&[Secret::new("whsec_edges").unwrap()], "evt_edge", t, b"{}");
        let at = |now: i64| Verifier::new("whsec_edges").unwrap()
            .tolerance(Duration::from_secs(tolerance))
            .verify_at(now, "evt_edge", &header, b"{}");
        let tol = tolerance as i64;
        prop_assert!(at(t + tol).is_ok());
        prop_assert!(at(t - tol).is_ok());
        prop_assert_eq!(at(t + tol + 1), Err(VerifyError::TimestampTooOld { age_secs: tolerance + 1 }));
        prop_assert_eq!(at(t - tol - 1), Err(VerifyError::TimestampTooNew { ahead_secs: tolerance + 1 }));
    }

    #[test]
    fn arbitrary_headers_never_panic_and_never_verify_without_the_mac(header in "\\PC{0,300}", body in body()) {
        let verdict = verifier(b"whsec_any", 1_800_000_000).verify("evt_1", &header, &body);
        prop_assert!(verdict.is_err());
    }
}
