//! The byte form of dimple's own packed structures (the outbox's packets, the
//! log's row records): numbers as LEB128 varints in their shortest form, text as
//! its length and bytes, optional text as 0 for none or its length + 1 and bytes.
//!
//! A reader answers None at anything damaged (cut short, a number not in its
//! shortest form or over 64 bits, text that is not UTF-8), never panics, and
//! leaves it to its user to say what was damaged.

pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_varint(out, 0),
        Some(s) => {
            put_varint(out, s.len() as u64 + 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    /// How many bytes were read.
    pub fn at(&self) -> usize {
        self.at
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.at == self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Some(b)
    }

    pub fn byte(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return None; // over 64 bits
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // One form per number: no trailing zero group.
                return (b != 0 || shift == 0).then_some(n);
            }
        }
        None
    }

    fn str(&mut self, n: u64) -> Option<&'a str> {
        std::str::from_utf8(self.bytes(usize::try_from(n).ok()?)?).ok()
    }

    pub fn text(&mut self) -> Option<String> {
        let n = self.varint()?;
        self.str(n).map(str::to_owned)
    }

    /// [`Reader::text`] into `out`, reusing its capacity.
    pub fn text_into(&mut self, out: &mut String) -> Option<()> {
        let n = self.varint()?;
        let s = self.str(n)?;
        out.clear();
        out.push_str(s);
        Some(())
    }

    pub fn opt(&mut self) -> Option<Option<String>> {
        match self.varint()? {
            0 => Some(None),
            n => self.str(n - 1).map(|s| Some(s.to_owned())),
        }
    }

    /// Passes over what [`Reader::opt`] reads (checking its text), keeping nothing.
    pub fn skip_opt(&mut self) -> Option<()> {
        match self.varint()? {
            0 => Some(()),
            n => self.str(n - 1).map(drop),
        }
    }

    /// [`Reader::opt`] into `out`, reusing its capacity.
    pub fn opt_into(&mut self, out: &mut Option<String>) -> Option<()> {
        match self.varint()? {
            0 => *out = None,
            n => {
                let s = self.str(n - 1)?;
                let o = out.get_or_insert_with(String::new);
                o.clear();
                o.push_str(s);
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What is written reads back, and nothing is left over.
        #[test]
        fn numbers_and_texts_read_back_as_written(
            items in proptest::collection::vec((any::<u64>(), ".{0,20}", proptest::option::of(".{0,20}")), 0..20)
        ) {
            let mut buf = Vec::new();
            for (n, t, o) in &items {
                put_varint(&mut buf, *n);
                put_text(&mut buf, t);
                put_opt(&mut buf, o.as_deref());
            }
            let mut r = Reader::new(&buf);
            for (n, t, o) in &items {
                prop_assert_eq!(r.varint(), Some(*n));
                prop_assert_eq!(r.text(), Some(t.clone()));
                prop_assert_eq!(r.opt(), Some(o.clone()));
            }
            prop_assert!(r.done());
        }

        /// A number has one form: written longer (a zero group after its last),
        /// it is refused.
        #[test]
        fn a_number_reads_only_from_its_shortest_form(n in any::<u64>().prop_map(|n| n >> (n % 64))) {
            let mut longer = Vec::new();
            put_varint(&mut longer, n);
            let last = longer.len() - 1;
            longer[last] |= 0x80;
            longer.push(0);
            prop_assert_eq!(Reader::new(&longer).varint(), None);
        }
    }
}
