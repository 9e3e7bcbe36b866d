//! Canonical JSON (RFC 8785, "JCS") for the values our types produce.
//!
//! Written here rather than relying on `serde_json::Map` being sorted: another crate in the
//! build turning on serde_json's `preserve_order` feature would silently change the order.

use serde_json::Value;

/// Encodes `value` as JCS: no whitespace, object members sorted by the UTF-16 code units of
/// their names. Strings and integers use serde_json's compact form, which escapes exactly what
/// JCS escapes (`"`, `\`, control characters as `\n`-style or lowercase `\u00xx`) and writes
/// all other characters as UTF-8. Floats are not canonicalized the JCS way; the signed types
/// contain none, and integers match JCS below 2^53.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::from(name.as_str()).to_string().as_bytes());
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_utf16_and_escapes_like_jcs() {
        // U+1F600 sorts after U+E000 in UTF-8 byte order but before it in UTF-16 (surrogates).
        let v = serde_json::json!({"b": [1, true, null], "a": "x\"\n\u{1}é/", "\u{1F600}": 1, "\u{E000}": 2});
        let s = String::from_utf8(to_vec(&v)).unwrap();
        assert_eq!(
            s,
            "{\"a\":\"x\\\"\\n\\u0001é/\",\"b\":[1,true,null],\"\u{1F600}\":1,\"\u{E000}\":2}"
        );
    }
}
