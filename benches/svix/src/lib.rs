//! The two verifiers under comparison, set up on the same body and the same
//! MAC: used by the interleaved table (`src/main.rs`) and the criterion bench
//! (`benches/criterion.rs`).
//!
//! Both verifiers get the same key bytes and the same signed content
//! (`id.timestamp.body`); each reads the signature in its own header format
//! (svix: base64 in `svix-signature`; Cariosan: hex in a `t=...,v1=...`
//! header). Parses use this crate's typed `Envelope` unless a name says
//! `Value`.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use cariosan_webhooks::model::Envelope;
use cariosan_webhooks::verify::{sign, Secret, Verifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[path = "../../support/interleave.rs"]
pub mod interleave;
#[path = "../../support/json.rs"]
mod json;

const KEY: &[u8] = b"whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";
const ID: &str = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";

/// Which HMAC backend this build of cariosan-webhooks uses.
pub const BACKEND: &str = if cfg!(feature = "ring") {
    "`ring`"
} else {
    "`hmac` + `sha2` (default)"
};

/// One signed delivery and both verifiers, checked to agree on its MAC.
pub struct Subjects {
    /// The compact `message.created` reply, in the sender's key order.
    pub body: Vec<u8>,
    ours: Verifier,
    our_header: String,
    svix: svix::webhooks::Webhook,
    svix_headers: http::HeaderMap,
    /// `id.timestamp.body`, the signed content.
    content: Vec<u8>,
    prepared: Hmac<Sha256>,
}

impl Subjects {
    /// Signs the reply fixture now (both verifiers check the timestamp
    /// against the system clock) and checks that both accept it.
    pub fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let reply = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../src/test_util/fixtures/events/message.created.reply.json"
        ))
        .expect("run from the cariosan-webhooks repository");
        let body = json::compact(&reply);

        let secret = Secret::new(KEY).unwrap();
        let ours = Verifier::from_secret(secret.clone());
        let our_header = sign(std::slice::from_ref(&secret), ID, now, &body);

        let svix = svix::webhooks::Webhook::from_bytes(KEY.to_vec()).unwrap();
        let mut svix_headers = http::HeaderMap::new();
        svix_headers.insert("svix-id", ID.parse().unwrap());
        svix_headers.insert("svix-timestamp", now.to_string().parse().unwrap());
        svix_headers.insert(
            "svix-signature",
            svix.sign(ID, now, &body).unwrap().parse().unwrap(),
        );

        let content = [ID.as_bytes(), b".", now.to_string().as_bytes(), b".", &body].concat();
        let prepared = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
        let subjects = Self {
            body,
            ours,
            our_header,
            svix,
            svix_headers,
            content,
            prepared,
        };
        // The same MAC under both encodings, and both verifiers accept it.
        let mac_hex = subjects.our_header.split("v1=").nth(1).unwrap();
        let raw = subjects.raw_hmac();
        assert_eq!(
            mac_hex,
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert!(subjects.svix_headers["svix-signature"]
            .to_str()
            .unwrap()
            .starts_with("v1,"));
        subjects.our_verify();
        subjects.svix_verify();
        subjects
    }

    /// This crate's verification.
    pub fn our_verify(&self) {
        self.ours
            .verify(
                black_box(ID),
                black_box(&self.our_header),
                black_box(&self.body),
            )
            .unwrap();
    }

    /// svix's verification.
    pub fn svix_verify(&self) {
        self.svix
            .verify(black_box(&self.body), black_box(&self.svix_headers))
            .unwrap();
    }

    /// The typed parse.
    pub fn typed(&self) {
        black_box(Envelope::from_slice(black_box(&self.body)).unwrap());
    }

    /// A parse into `serde_json::Value`.
    pub fn value(&self) {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&self.body)).unwrap());
    }

    /// HMAC-SHA256 with `hmac` + `sha2`, key prepared once.
    pub fn raw_hmac(&self) -> [u8; 32] {
        let mut mac = self.prepared.clone();
        mac.update(black_box(&self.content));
        mac.finalize().into_bytes().into()
    }

    /// svix's HMAC: the `hmac-sha256` crate's one-shot HMAC, key schedule
    /// included.
    pub fn svix_raw_hmac(&self) -> [u8; 32] {
        hmac_sha256::HMAC::mac(black_box(&self.content), KEY)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new()
    }
}
