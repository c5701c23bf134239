//! Parsing of the `X-Cariosan-Signature` header.

use super::error::MalformedSignature;

/// Length in bytes of an HMAC-SHA256 tag.
pub(crate) const MAC_LEN: usize = 32;

/// At most this many `v1` elements are considered. The sender emits one per
/// live secret (two during a rotation); the cap bounds the work a hostile
/// header can cause.
pub const MAX_SIGNATURES: usize = 16;

/// Longest header accepted, in bytes: room for [`MAX_SIGNATURES`] elements,
/// a timestamp, unknown schemes and optional whitespace.
pub const MAX_HEADER_LEN: usize = 4096;

/// A parsed `X-Cariosan-Signature` header: one timestamp and the decoded `v1`
/// MACs. Unknown schemes are skipped.
#[derive(Clone)]
pub(crate) struct SignatureHeader<'a> {
    /// The `t` value exactly as sent, as it enters the signed content.
    pub(crate) timestamp_text: &'a [u8],
    /// The `t` value as a number.
    pub(crate) timestamp: i64,
    /// The first `count` are the decoded `v1` MACs; kept inline, so a parse
    /// allocates nothing.
    macs: [[u8; MAC_LEN]; MAX_SIGNATURES],
    count: usize,
}

impl<'a> SignatureHeader<'a> {
    /// Parses a header value per the grammar of the protocol, section 3.
    pub(crate) fn parse(value: &'a [u8]) -> Result<Self, MalformedSignature> {
        if value.len() > MAX_HEADER_LEN {
            return Err(MalformedSignature::TooLong);
        }
        let mut timestamp: Option<(&[u8], i64)> = None;
        let mut macs = [[0u8; MAC_LEN]; MAX_SIGNATURES];
        let mut count = 0;
        let mut saw_v1 = false;
        for element in value.split(|&b| b == b',') {
            let element = trim(element);
            let Some(eq) = element.iter().position(|&b| b == b'=') else {
                return Err(MalformedSignature::BadElement);
            };
            let key = trim(&element[..eq]);
            let val = trim(&element[eq + 1..]);
            match key {
                b"t" => {
                    if timestamp.is_some() {
                        return Err(MalformedSignature::DuplicateTimestamp);
                    }
                    timestamp = Some((val, parse_timestamp(val)?));
                }
                b"v1" => {
                    saw_v1 = true;
                    if count == MAX_SIGNATURES {
                        return Err(MalformedSignature::TooManySignatures);
                    }
                    // A malformed v1 beside a well-formed one is skipped: the
                    // grammar only demands at least one well-formed v1.
                    if decode_mac(val, &mut macs[count]) {
                        count += 1;
                    }
                }
                b"" => return Err(MalformedSignature::BadElement),
                _ => {}
            }
        }
        let Some((timestamp_text, timestamp)) = timestamp else {
            return Err(MalformedSignature::MissingTimestamp);
        };
        if count == 0 {
            return Err(if saw_v1 {
                MalformedSignature::BadSignature
            } else {
                MalformedSignature::MissingSignature
            });
        }
        Ok(Self {
            timestamp_text,
            timestamp,
            macs,
            count,
        })
    }

    #[cfg(test)]
    fn timestamp(&self) -> i64 {
        self.timestamp
    }

    #[cfg(test)]
    fn signature_count(&self) -> usize {
        self.count
    }

    /// The decoded `v1` MACs.
    pub(crate) fn macs(&self) -> &[[u8; MAC_LEN]] {
        &self.macs[..self.count]
    }
}

impl std::fmt::Debug for SignatureHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureHeader")
            .field("timestamp", &self.timestamp)
            .field("signature_count", &self.count)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SignatureHeader<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.timestamp_text == other.timestamp_text && self.macs() == other.macs()
    }
}

impl Eq for SignatureHeader<'_> {}

/// The value of each hex digit, upper or lower case; 0xff for any other
/// byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut at = 0;
    while at < 10 {
        table[b'0' as usize + at] = at as u8;
        at += 1;
    }
    let mut at = 0;
    while at < 6 {
        table[b'a' as usize + at] = 10 + at as u8;
        table[b'A' as usize + at] = 10 + at as u8;
        at += 1;
    }
    table
};

/// Decodes exactly `2 * MAC_LEN` hex digits into `out`; false for any
/// other length or a non-hex byte. A table per digit and one check at the
/// end: the `hex` crate's per-digit error path cost about as much again.
fn decode_mac(text: &[u8], out: &mut [u8; MAC_LEN]) -> bool {
    if text.len() != 2 * MAC_LEN {
        return false;
    }
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = HEX_VALUES[usize::from(pair[0])];
        let low = HEX_VALUES[usize::from(pair[1])];
        invalid |= (high | low) & 0xf0;
        *byte = (high << 4) | (low & 0x0f);
    }
    invalid == 0
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `t = 1*19DIGIT`, and it must fit an `i64`.
fn parse_timestamp(text: &[u8]) -> Result<i64, MalformedSignature> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err(MalformedSignature::BadTimestamp);
    }
    text.iter()
        .try_fold(0i64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
        .ok_or(MalformedSignature::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "c81cbcd8fd9129409ff11e55a9c072e24b98a1eed5bef22c38ac5c251383a9e5";

    #[test]
    fn the_mac_decoder_agrees_with_the_hex_crate_on_every_byte_at_every_position() {
        let upper = MAC.to_ascii_uppercase();
        for text in [MAC, upper.as_str()] {
            let mut ours = [0u8; MAC_LEN];
            assert!(decode_mac(text.as_bytes(), &mut ours));
            assert_eq!(hex::decode(text).unwrap(), ours);
        }
        for at in 0..2 * MAC_LEN {
            for byte in 0..=255u8 {
                let mut text = MAC.as_bytes().to_vec();
                text[at] = byte;
                let mut ours = [0u8; MAC_LEN];
                let mut theirs = [0u8; MAC_LEN];
                let valid = hex::decode_to_slice(&text, &mut theirs).is_ok();
                assert_eq!(decode_mac(&text, &mut ours), valid, "byte {byte} at {at}");
                if valid {
                    assert_eq!(ours, theirs);
                }
            }
        }
        let mut out = [0u8; MAC_LEN];
        assert!(!decode_mac(&MAC.as_bytes()[1..], &mut out));
        assert!(!decode_mac(format!("{MAC}0").as_bytes(), &mut out));
        assert!(!decode_mac(b"", &mut out));
    }

    fn parse(s: &str) -> Result<SignatureHeader<'_>, MalformedSignature> {
        SignatureHeader::parse(s.as_bytes())
    }

    #[test]
    fn parses_timestamp_and_macs_with_whitespace_and_unknown_schemes() {
        let header = format!("t=17 ,\tv2=zz, v1 = {MAC} ,v1={}", MAC.to_uppercase());
        let parsed = parse(&header).unwrap();
        assert_eq!(parsed.timestamp(), 17);
        assert_eq!(parsed.timestamp_text, b"17");
        assert_eq!(parsed.signature_count(), 2);
        assert_eq!(parsed.macs()[0], parsed.macs()[1]);
    }

    #[test]
    fn rejects_each_grammar_violation_with_its_reason() {
        use MalformedSignature::*;
        let cases: &[(&str, MalformedSignature)] = &[
            ("", BadElement),
            ("t=1", MissingSignature),
            (&format!("v1={MAC}"), MissingTimestamp),
            (&format!("t=1,t=1,v1={MAC}"), DuplicateTimestamp),
            (&format!("t=-1,v1={MAC}"), BadTimestamp),
            (&format!("t=+1,v1={MAC}"), BadTimestamp),
            (&format!("t=,v1={MAC}"), BadTimestamp),
            (&format!("t=9223372036854775808,v1={MAC}"), BadTimestamp),
            (&format!("t=12345678901234567890,v1={MAC}"), BadTimestamp),
            ("t=1,v1=abc", BadSignature),
            (&format!("t=1,,v1={MAC}"), BadElement),
            (&format!("t=1,=x,v1={MAC}"), BadElement),
            (&format!("t=1,v1{MAC}"), BadElement),
        ];
        for (header, reason) in cases {
            assert_eq!(parse(header), Err(*reason), "header {header:?}");
        }
    }

    #[test]
    fn largest_i64_timestamp_is_accepted() {
        let header = format!("t=9223372036854775807,v1={MAC}");
        assert_eq!(parse(&header).unwrap().timestamp(), i64::MAX);
    }

    #[test]
    fn bounds_the_number_of_signatures_and_the_length() {
        let many = format!("t=1{}", format!(",v1={MAC}").repeat(MAX_SIGNATURES + 1));
        assert_eq!(parse(&many), Err(MalformedSignature::TooManySignatures));
        let long = format!("t=1,v1={MAC},x={}", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(parse(&long), Err(MalformedSignature::TooLong));
    }
}
