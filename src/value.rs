//! The exact text encoding of SQLite values used in `ZV_CHANGE` and in batches.
//!
//! JSON alone cannot tell 1 from 1.0 from "1", nor hold bytes or infinities, so:
//! `null`; integers as JSON integers; finite reals always with a `.` or exponent;
//! text as JSON strings; blobs as `{"blob":"<base64>"}`; infinite reals as
//! `{"real":"inf"}` / `{"real":"-inf"}`; text whose bytes are not UTF-8 (SQLite
//! stores whatever bytes an app gives it as TEXT, and JSON strings hold only
//! Unicode) as `{"text":"<base64>"}`. Every storage class survives the round trip,
//! bit for bit.
//!
//! Values are held as [`Cell`]s rather than rusqlite's `Value`, whose TEXT is a
//! Rust `String`: reading such text as a `Value` panics.
//!
//! A value stored out of line (docs/attachments.md) is a reference instead:
//! `{"blobref":"<sha256 hex>:<size>"}` for a BLOB, `{"textref":"..."}` for TEXT,
//! naming the sha256 of its bytes and their number. [`decode`] refuses references
//! (they are not a value one can hold); [`decode_stored`] returns them.
//!
//! Reals are written as the shortest text that reads back to the same 64 bits, and
//! read with serde_json's `float_roundtrip` parser: its default parser is off by one
//! unit in the last place for some values, which once made REALs change in transit.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::ToSql;
use serde_json::Value as Json;

/// A value as SQLite holds it: TEXT is its bytes, UTF-8 or not. Two cells are
/// equal when they are the same bits (0.0 is not -0.0).
#[derive(Clone)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Cell {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(*i),
            Cell::Real(f) => ValueRef::Real(*f),
            Cell::Text(t) => ValueRef::Text(t),
            Cell::Blob(b) => ValueRef::Blob(b),
        }
    }
}

impl PartialEq for Cell {
    fn eq(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Real(a), Cell::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a.as_ref() == b.as_ref(),
        }
    }
}

/// As rusqlite's `Value` shows itself; TEXT that is not UTF-8 as its bytes.
impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => f.write_str("Null"),
            Cell::Integer(i) => f.debug_tuple("Integer").field(i).finish(),
            Cell::Real(x) => f.debug_tuple("Real").field(x).finish(),
            Cell::Text(t) => match std::str::from_utf8(t) {
                Ok(t) => f.debug_tuple("Text").field(&t).finish(),
                Err(_) => f.debug_tuple("Text").field(t).finish(),
            },
            Cell::Blob(b) => f.debug_tuple("Blob").field(b).finish(),
        }
    }
}

/// Whether the cell holds the value, bit for bit.
impl PartialEq<Value> for Cell {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Cell::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a.as_ref() == ValueRef::from(b),
        }
    }
}

impl From<ValueRef<'_>> for Cell {
    fn from(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

impl From<Value> for Cell {
    fn from(v: Value) -> Cell {
        match v {
            Value::Null => Cell::Null,
            Value::Integer(i) => Cell::Integer(i),
            Value::Real(f) => Cell::Real(f),
            Value::Text(t) => Cell::Text(t.into_bytes()),
            Value::Blob(b) => Cell::Blob(b),
        }
    }
}

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_ref()))
    }
}

impl FromSql for Cell {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Cell::from(v))
    }
}

/// The largest value SQLite can store at all (2^31-1 bytes, the most
/// `SQLITE_MAX_LENGTH` allows; dimple's builds set it, `.cargo/config.toml`): a
/// reference to anything bigger is refused.
pub const MAX_SIZE: u64 = i32::MAX as u64;

/// A value stored out of line: the sha256 of its bytes, their number, and whether
/// it is TEXT (UTF-8 bytes) or a BLOB.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ref {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    pub text: bool,
}

impl Ref {
    pub fn encode(&self) -> String {
        format!(r#"{{"{}":"{}:{}"}}"#, if self.text { "textref" } else { "blobref" }, self.sha256, self.size)
    }

    fn parse(tag: &str, body: &str) -> Option<Ref> {
        let text = match tag {
            "blobref" => false,
            "textref" => true,
            _ => return None,
        };
        let (sha, size) = body.split_once(':')?;
        let hex_ok = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let size_ok = !size.is_empty() && size.len() <= 10 && size.bytes().all(|b| b.is_ascii_digit());
        let size: u64 = size.parse().ok()?;
        (hex_ok && size_ok && size <= MAX_SIZE).then(|| Ref { sha256: sha.to_owned(), size, text })
    }
}

/// A stored value: held in the text itself, or out of line.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Inline(Cell),
    Ref(Ref),
}

/// Decodes a value as stored in the log or a batch, references included.
pub fn decode_stored(s: &str) -> Result<Stored, String> {
    if s.starts_with(r#"{"blobref":"#) || s.starts_with(r#"{"textref":"#) {
        let json: Json = serde_json::from_str(s).map_err(|e| format!("bad value encoding {:?}: {e}", clip(s)))?;
        let r = match &json {
            Json::Object(o) if o.len() == 1 => match o.iter().next() {
                Some((tag, Json::String(body))) => Ref::parse(tag, body),
                _ => None,
            },
            _ => None,
        };
        // Exactly the text `Ref::encode` writes: one encoding per reference.
        return match r {
            Some(r) if r.encode() == s => Ok(Stored::Ref(r)),
            _ => Err(format!("bad value reference {:?}", clip(s))),
        };
    }
    decode(s).map(Stored::Inline)
}

pub fn encode(v: &Value) -> String {
    encode_ref(v.into())
}

/// [`encode`] for a value as SQLite gives it: TEXT whose bytes are not UTF-8
/// takes the tagged form.
pub fn encode_ref(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "null".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) if f.is_finite() => {
            let s = serde_json::to_string(&f).expect("finite floats serialize");
            if s.contains(['.', 'e', 'E']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        // SQLite stores NaN as NULL, so a NaN can only come from a caller's value.
        ValueRef::Real(f) if f.is_nan() => "null".to_owned(),
        ValueRef::Real(f) => format!(r#"{{"real":"{}"}}"#, if f > 0.0 { "inf" } else { "-inf" }),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(t) => serde_json::to_string(t).expect("strings serialize"),
            Err(_) => format!(r#"{{"text":"{}"}}"#, B64.encode(t)),
        },
        ValueRef::Blob(b) => format!(r#"{{"blob":"{}"}}"#, B64.encode(b)),
    }
}

/// Decodes what [`encode`] wrote. Anything else is refused: the text may come from
/// a remote batch.
pub fn decode(s: &str) -> Result<Cell, String> {
    if let Some(v) = decode_plain(s) {
        return Ok(v);
    }
    decode_json(s)
}

/// The JSON reading of [`decode`], for every value.
fn decode_json(s: &str) -> Result<Cell, String> {
    let json: Json = serde_json::from_str(s).map_err(|e| format!("bad value encoding {:?}: {e}", clip(s)))?;
    from_json(&json).ok_or_else(|| format!("bad value encoding {:?}", clip(s)))
}

/// The common values read without building a JSON tree: a string with nothing
/// escaped, a whole number in JSON's form that fits 64 bits (not "-0"), a finite
/// real in JSON's form, null. None for
/// anything else, which [`decode_json`] then reads (the same value, or the
/// same refusal: a property test compares the two). Applying a pull decodes
/// every value it writes to a table: the tree and its copy of the text were
/// about 4% of the merging thread.
/// The text of a stored string value with nothing escaped, as it is: what
/// [`decode`] reads it as, without a copy.
pub fn plain_text(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let inner = s.get(1..s.len().checked_sub(1)?)?;
    let plain = b.len() >= 2
        && b[0] == b'"'
        && b[b.len() - 1] == b'"'
        && !inner.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20);
    plain.then_some(inner)
}

fn decode_plain(s: &str) -> Option<Cell> {
    let b = s.as_bytes();
    match b.first()? {
        b'"' => plain_text(s).map(|t| Cell::Text(t.as_bytes().to_vec())),
        b'-' | b'0'..=b'9' => {
            let digits = b.strip_prefix(b"-").unwrap_or(b);
            // JSON's "-0" is the real -0.0.
            let json_form = !digits.is_empty()
                && digits.iter().all(u8::is_ascii_digit)
                && (digits[0] != b'0' || (digits.len() == 1 && digits.len() == b.len()));
            if json_form {
                s.parse::<i64>().ok().map(Cell::Integer)
            } else if json_real(digits) {
                // std's parse rounds correctly, as serde_json does with
                // `float_roundtrip`; out of range, the JSON reading refuses it.
                let f: f64 = s.parse().ok()?;
                f.is_finite().then_some(Cell::Real(f))
            } else {
                None
            }
        }
        _ if s == "null" => Some(Cell::Null),
        _ => None,
    }
}

/// Whether `d` (a number without its sign) is in JSON's form with a fraction or
/// an exponent: `0` or digits not starting with `0`, then `.` and digits, then
/// `e` or `E`, a sign or none, and digits, at least one of the two parts.
fn json_real(d: &[u8]) -> bool {
    let digits = |d: &[u8]| d.iter().take_while(|c| c.is_ascii_digit()).count();
    let int = digits(d);
    if int == 0 || (d[0] == b'0' && int > 1) {
        return false;
    }
    let mut rest = &d[int..];
    let mut parts = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = digits(frac);
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
        parts += 1;
    }
    if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exp = exp.strip_prefix(b"+").or_else(|| exp.strip_prefix(b"-")).unwrap_or(exp);
        let n = digits(exp);
        if n == 0 {
            return false;
        }
        rest = &exp[n..];
        parts += 1;
    }
    parts > 0 && rest.is_empty()
}

/// Accepts exactly what [`decode`] accepts (without leading whitespace), without
/// building the value: validating every change of a pulled batch is on the hot path,
/// and only tagged objects (blobs, infinities) need the full decode.
pub fn check(s: &str) -> Result<(), String> {
    match s.as_bytes().first() {
        Some(b'{') => decode_stored(s).map(|_| ()),
        Some(b'"' | b'-' | b'0'..=b'9' | b'n') => serde_json::from_str::<serde::de::IgnoredAny>(s)
            .map(|_| ())
            .map_err(|e| format!("bad value encoding {:?}: {e}", clip(s))),
        _ => Err(format!("bad value encoding {:?}", clip(s))),
    }
}

fn from_json(j: &Json) -> Option<Cell> {
    Some(match j {
        Json::Null => Cell::Null,
        Json::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => Cell::Integer(i),
            _ => Cell::Real(n.as_f64()?),
        },
        Json::String(t) => Cell::Text(t.clone().into_bytes()),
        Json::Object(o) if o.len() == 1 => match o.iter().next()? {
            (k, Json::String(b)) if k == "blob" => Cell::Blob(B64.decode(b).ok()?),
            // One encoding per value: text that is UTF-8 is a JSON string.
            (k, Json::String(b)) if k == "text" => {
                Cell::Text(B64.decode(b).ok().filter(|t| std::str::from_utf8(t).is_err())?)
            }
            (k, Json::String(r)) if k == "real" && r == "inf" => Cell::Real(f64::INFINITY),
            (k, Json::String(r)) if k == "real" && r == "-inf" => Cell::Real(f64::NEG_INFINITY),
            _ => return None,
        },
        _ => return None,
    })
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn the_bundled_sqlite_holds_values_up_to_max_size_and_no_more() {
        // zeroblob() refuses a length over SQLITE_MAX_LENGTH; length() counts its
        // zeros without allocating them.
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let len = |n: u64| c.query_row("SELECT length(zeroblob(?1))", [n as i64], |r| r.get::<_, i64>(0));
        assert_eq!(len(MAX_SIZE).unwrap() as u64, MAX_SIZE);
        assert!(len(MAX_SIZE + 1).is_err());
    }

    #[test]
    fn every_storage_class_round_trips_exactly() {
        let cases = [
            Value::Null,
            Value::Integer(0),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Real(1.0),
            Value::Real(-0.0),
            Value::Real(0.1 + 0.2),
            Value::Real(1e300),
            Value::Real(f64::MIN_POSITIVE),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Text(String::new()),
            Value::Text("1".into()),
            Value::Text("héllo \"\n\u{0}".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 255, 1]),
        ];
        for v in cases {
            let back = decode(&encode(&v)).unwrap();
            match (&v, &back) {
                (Value::Real(a), Cell::Real(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{v:?}"),
                _ => assert_eq!(Cell::from(v), back),
            }
        }
    }

    proptest::proptest! {
        /// Issue 9: every finite 64-bit pattern, not only values that survive a
        /// 15-digit round trip, comes back with the same bits.
        #[test]
        fn every_finite_real_round_trips_bit_for_bit(bits in proptest::prelude::any::<u64>()) {
            let f = f64::from_bits(bits);
            proptest::prop_assume!(!f.is_nan());
            let enc = encode(&Value::Real(f));
            proptest::prop_assert_eq!(check(&enc), Ok(()));
            match decode(&enc) {
                Ok(Cell::Real(back)) => proptest::prop_assert_eq!(back.to_bits(), bits, "{}", enc),
                other => proptest::prop_assert!(false, "{enc} decoded to {other:?}"),
            }
        }

        /// Whatever the plain reading decodes, the JSON reading decodes to the
        /// same value: strings with and without escapes, quotes and control
        /// characters, numbers with leading zeros or past 64 bits, reals in and
        /// out of JSON's form, beyond range and rounding to zero, and every real
        /// as dimple writes it.
        #[test]
        fn the_plain_reading_agrees_with_the_json_reading(s in proptest::prop_oneof![
            ".*",
            "\"[\u{0}-~\u{80}-\u{10ffff}]{0,12}\"?",
            "-?[0-9]{0,21}",
            "-?[0-9]{0,5}(\\.[0-9]{0,8})?([eE][-+]?[0-9]{0,4})?",
            proptest::strategy::Strategy::prop_map(proptest::prelude::any::<u64>(), |bits| encode(&Value::Real(f64::from_bits(bits)))),
            proptest::strategy::Just("null".to_owned()),
        ]) {
            if let Some(v) = decode_plain(&s) {
                match (decode_json(&s), v) {
                    (Ok(Cell::Real(a)), Cell::Real(b)) => proptest::prop_assert_eq!(a.to_bits(), b.to_bits(), "{}", s),
                    (json, v) => proptest::prop_assert_eq!(json, Ok(v), "{}", s),
                }
            }
        }

        #[test]
        fn arbitrary_text_and_bytes_round_trip_exactly(t in ".*", b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            proptest::prop_assert_eq!(decode(&encode(&Value::Text(t.clone()))), Ok(Cell::Text(t.into_bytes())));
            proptest::prop_assert_eq!(decode(&encode(&Value::Blob(b.clone()))), Ok(Cell::Blob(b)));
        }

        /// SQLite stores any bytes an app gives it as TEXT: each arrives as
        /// itself, still TEXT, and has exactly one encoding (a JSON string when
        /// the bytes are UTF-8, the tagged form only when they are not).
        #[test]
        fn text_of_any_bytes_round_trips_as_text(
            t in proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                ".{0,20}".prop_map(String::into_bytes),
                (".{0,10}", proptest::prelude::any::<u8>(), ".{0,10}")
                    .prop_map(|(a, b, c)| [a.as_bytes(), &[b], c.as_bytes()].concat()),
            ]
        ) {
            let enc = encode_ref(ValueRef::Text(&t));
            proptest::prop_assert_eq!(check(&enc), Ok(()));
            proptest::prop_assert_eq!(decode(&enc), Ok(Cell::Text(t.clone())));
            proptest::prop_assert_eq!(decode_stored(&enc), Ok(Stored::Inline(Cell::Text(t.clone()))));
            let utf8 = std::str::from_utf8(&t).is_ok();
            proptest::prop_assert_eq!(enc.starts_with('"'), utf8, "{}", enc);
            // The tagged form of UTF-8 text is a second encoding: refused.
            let tagged = format!(r#"{{"text":"{}"}}"#, B64.encode(&t));
            proptest::prop_assert_eq!(decode(&tagged).is_ok(), !utf8, "{}", tagged);
            proptest::prop_assert_eq!(check(&tagged).is_ok(), !utf8, "{}", tagged);
        }
    }

    proptest::proptest! {
        /// Attachments: every reference reads back as itself, and the plain decoder
        /// never takes one for a value.
        #[test]
        fn references_round_trip_and_are_never_values(sha in proptest::collection::vec(proptest::prelude::any::<u8>(), 32), size in 0..=MAX_SIZE, text: bool) {
            let r = Ref { sha256: crate::hash::hex(&sha), size, text };
            let enc = r.encode();
            proptest::prop_assert_eq!(decode_stored(&enc), Ok(Stored::Ref(r)));
            proptest::prop_assert_eq!(check(&enc), Ok(()));
            proptest::prop_assert!(decode(&enc).is_err());
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        let sha = "ab".repeat(32);
        for bad in [
            format!(r#"{{"blobref":"{}:1"}}"#, "AB".repeat(32)),
            format!(r#"{{"blobref":"{}:1"}}"#, "ab".repeat(31)),
            format!(r#"{{"blobref":"{sha}:"}}"#),
            format!(r#"{{"blobref":"{sha}:-1"}}"#),
            format!(r#"{{"blobref":"{sha}:01"}}"#),
            format!(r#"{{"blobref":"{sha}:{}"}}"#, MAX_SIZE + 1),
            format!(r#"{{"blobref":"{sha}:1","x":1}}"#),
            format!(r#"{{"blobref": "{sha}:1"}}"#),
            format!(r#"{{"blobref":"{sha}"}}"#),
            format!(r#"{{"fileref":"{sha}:1"}}"#),
        ] {
            assert!(decode_stored(&bad).is_err(), "{bad}");
            assert!(check(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integer_real_and_text_stay_distinct() {
        assert_eq!(encode(&Value::Integer(1)), "1");
        assert_eq!(encode(&Value::Real(1.0)), "1.0");
        assert_eq!(encode(&Value::Text("1".into())), "\"1\"");
    }

    #[test]
    fn foreign_encodings_are_refused() {
        for bad in [
            "",
            "[1]",
            "{\"blob\":1}",
            "{\"blob\":\"!!\"}",
            "{\"x\":\"y\"}",
            "{\"real\":\"nan\"}",
            "tru",
            "true",
            "01",
            "1.",
            "-",
            "\"unterminated",
            "nul",
            "null x",
            "\"a\" \"b\"",
            "[]",
        ] {
            assert!(decode(bad).is_err(), "decode {bad}");
            assert!(check(bad).is_err(), "check {bad}");
        }
    }

    #[test]
    fn check_accepts_what_encode_writes() {
        for v in [
            Value::Null,
            Value::Integer(-5),
            Value::Real(2.5e-300),
            Value::Real(f64::NEG_INFINITY),
            Value::Text("quote \" and \\ and \u{1}".into()),
            Value::Blob(vec![9; 40]),
        ] {
            assert_eq!(check(&encode(&v)), Ok(()), "{v:?}");
        }
    }
}
