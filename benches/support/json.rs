//! Whitespace-free JSON in the order it was written, as a sender emits it.
//! (A round trip through `serde_json::Value` would sort the keys and put
//! `data` before `type`, which makes the typed parse take its slower path.)

/// `json` without the whitespace between tokens; strings are left as they are.
pub fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            out.push(byte);
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if !byte.is_ascii_whitespace() {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    out
}
