//! `verify`: which check a captured delivery passes or fails, and why.

use std::process::ExitCode;
use std::time::Duration;

use cariosan_webhooks::protocol::is_valid_delivery_id;
use cariosan_webhooks::verify::{Clock, SystemClock, Verifier, VerifyError};

use crate::read_stdin;

#[derive(clap::Args)]
pub struct Verify {
    // The secrets to try, in order (repeat the flag for several).
    #[command(flatten)]
    secret: crate::SecretArg,
    /// The X-Cariosan-Signature value as captured (a pasted
    /// "X-Cariosan-Signature: " in front is ignored).
    #[arg(long)]
    header: String,
    /// The X-Cariosan-Event value as captured, to check against the body's
    /// "type".
    #[arg(long)]
    event: Option<String>,
    /// The X-Cariosan-Delivery value as captured.
    #[arg(long)]
    delivery: String,
    /// Verify as of this Unix time (default: now), e.g. when it arrived.
    #[arg(long)]
    now: Option<i64>,
    /// The tolerance in seconds.
    #[arg(long, default_value_t = 300)]
    tolerance: u64,
}

impl Verify {
    pub fn run(mut self) -> Result<ExitCode, String> {
        let body = read_stdin()?;
        self.header = strip_header_name(&self.header).to_owned();
        let now = self.now.unwrap_or_else(|| SystemClock.now());
        let mut failed: Option<&'static str> = None;

        if is_valid_delivery_id(&self.delivery) {
            println!("ok      delivery id {:?}", self.delivery);
        } else {
            println!(
                "FAILED  delivery id {:?}: 1 to 128 of A-Z a-z 0-9 _ - [delivery_id_invalid]",
                self.delivery
            );
            failed = Some("delivery_id_invalid");
        }

        // The header's grammar and its timestamp's age, from a verifier with
        // no tolerance: it checks both before any MAC, under any delivery id.
        let inspector = Verifier::new(&self.secret.secrets[0])
            .map_err(|e| format!("secret #1: {e}"))?
            .tolerance(Duration::ZERO);
        let age = match inspector.verify_at(now, "inspect", &self.header, &body) {
            Ok(_) | Err(VerifyError::NoMatchingSignature) => Some(0),
            Err(VerifyError::TimestampTooOld { age_secs }) => Some(i128::from(age_secs)),
            Err(VerifyError::TimestampTooNew { ahead_secs }) => Some(-i128::from(ahead_secs)),
            Err(VerifyError::MissingSignature) => {
                println!("FAILED  signature header: empty [signature_missing]");
                failed = failed.or(Some("signature_missing"));
                None
            }
            Err(VerifyError::MalformedSignature(reason)) => {
                println!("FAILED  signature header: {reason} [signature_malformed]");
                failed = failed.or(Some("signature_malformed"));
                None
            }
            Err(other) => return Err(format!("unexpected: {other}")),
        };
        let header = age.inspect(|age| {
            let signatures = self
                .header
                .split(',')
                .filter_map(|element| element.split_once('='))
                .filter(|(key, mac)| {
                    let mac = mac.trim_matches([' ', '\t']);
                    key.trim_matches([' ', '\t']) == "v1"
                        && mac.len() == 64
                        && mac.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .count();
            println!(
                "ok      signature header: t={}, {signatures} v1 signature(s)",
                i128::from(now) - age
            );
        });

        if let Some(age) = header {
            let within = age.unsigned_abs() <= u128::from(self.tolerance);
            let when = if age >= 0 {
                format!("{age} s before now")
            } else {
                format!("{} s after now", -age)
            };
            if within {
                println!(
                    "ok      timestamp: signed {when}, within the tolerance of {} s",
                    self.tolerance
                );
            } else {
                let code = if age > 0 {
                    "timestamp_too_old"
                } else {
                    "timestamp_too_new"
                };
                println!(
                    "FAILED  timestamp: signed {when}, over the tolerance of {} s [{code}]",
                    self.tolerance
                );
                failed = failed.or(Some(code));
            }
        }

        if header.is_some() && is_valid_delivery_id(&self.delivery) {
            let mut matched = false;
            for (n, secret) in self.secret.secrets.iter().enumerate() {
                let verifier = Verifier::new(secret)
                    .map_err(|e| format!("secret #{}: {e}", n + 1))?
                    .tolerance(Duration::from_secs(u64::MAX));
                match verifier.verify_at(now, &self.delivery, &self.header, &body) {
                    Ok(_) => {
                        println!("ok      signature: matches under secret #{}", n + 1);
                        matched = true;
                        break;
                    }
                    Err(VerifyError::NoMatchingSignature) => {
                        println!("-       signature: no v1 matches under secret #{}", n + 1);
                    }
                    Err(other) => return Err(format!("unexpected: {other}")),
                }
            }
            if !matched {
                println!(
                    "FAILED  signature: no v1 matches under any of {} secret(s); the body, the delivery id or the secret differs from what was signed [signature_mismatch]",
                    self.secret.secrets.len()
                );
                failed = failed.or(Some("signature_mismatch"));
            }
        }

        if failed.is_none() {
            failed = self.check_envelope(&body);
        }

        match failed {
            None => {
                println!("valid");
                Ok(ExitCode::SUCCESS)
            }
            Some(code) => {
                println!("invalid: {code}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// The value of a pasted `X-Cariosan-Signature: t=...` line.
fn strip_header_name(header: &str) -> &str {
    let trimmed = header.trim();
    match trimmed.split_once(':') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("x-cariosan-signature") => {
            value.trim()
        }
        _ => trimmed,
    }
}

impl Verify {
    /// What the layer checks after the signature: the body is an envelope,
    /// and its id and type equal the headers.
    fn check_envelope(&self, body: &[u8]) -> Option<&'static str> {
        use cariosan_webhooks::model::{Envelope, ParseError};
        let (id, event_type) = match Envelope::from_slice(body) {
            Ok(envelope) => (envelope.id.to_string(), envelope.event_type().to_owned()),
            Err(ParseError::MalformedData(malformed)) => {
                println!(
                    "ok      envelope, but its data does not fit the model ({}): the receiver answers 500 event_malformed unless on_malformed takes it",
                    malformed.error()
                );
                (
                    malformed.id().to_string(),
                    malformed.event_type().to_owned(),
                )
            }
            Err(error) => {
                println!("FAILED  envelope: {error} [envelope_invalid]");
                return Some("envelope_invalid");
            }
        };
        if id != self.delivery {
            println!(
                "FAILED  envelope: its id {id:?} is not the delivery id {:?} [envelope_mismatch]",
                self.delivery
            );
            return Some("envelope_mismatch");
        }
        if let Some(expected) = &self.event {
            if *expected != event_type {
                println!(
                    "FAILED  envelope: its type {event_type:?} is not the event header {expected:?} [envelope_mismatch]"
                );
                return Some("envelope_mismatch");
            }
        }
        println!("ok      envelope: {event_type} {id}");
        None
    }
}
