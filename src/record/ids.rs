//! How a record writes a change id after the ids before it (forms 1 to 3,
//! docs/format.md): in full, or as a difference from an earlier id of the same
//! node, a few bytes where the id takes 16. The tags that say which, and the
//! arithmetic both ways; what a tag's other bits mean is the record's
//! ([`super::SAME_TX`], [`super::OLD_KEPT`]).

use crate::packed::put_varint;

pub(super) const FULL: u8 = 0;
pub(super) const DELTA: u8 = 1;
pub(super) const TEXT: u8 = 2;
/// Form 1 only: a difference of 64 bits or more from the previous id.
pub(super) const WIDE_DELTA: u8 = 3;
pub(super) const FAR: u8 = 4;
pub(super) const FIRST_DELTA: u8 = 5;
pub(super) const FIRST_FAR: u8 = 6;

/// The low bits of an id that name its node (`crate::clock`): ids of one node
/// differ above them.
pub(super) const NODE_BITS: u32 = 32;

/// An id's bits above the millisecond (`crate::clock`): ids a millisecond or
/// more apart differ there.
pub(super) const MS_SHIFT: u32 = 80;

/// The bits between the node and the millisecond: version, counter, variant.
pub(super) const MID_MASK: u128 = (1 << (MS_SHIFT - NODE_BITS)) - 1;

/// How an id is written after an earlier id `r` of the record from the same
/// node that it is greater than.
#[derive(Clone, Copy)]
pub(super) enum Rel {
    /// The same millisecond: the difference above the node (under 2^48).
    Near(u64),
    /// Later milliseconds: how many, and the bits between node and millisecond
    /// exclusive-or'd with `r`'s (a counter restarts each millisecond, so those
    /// differ in a few low bits where the plain difference would have borrowed
    /// across all 48).
    Far(u64, u64),
}

/// Whether `v` can be written as a difference from `r`: greater, same node.
pub(super) fn above_same_node(v: u128, r: u128) -> bool {
    v > r && (v ^ r) & ((1u128 << NODE_BITS) - 1) == 0
}

impl Rel {
    pub(super) fn of(v: u128, r: u128) -> Option<Rel> {
        if !above_same_node(v, r) {
            return None;
        }
        let (hv, hr) = ((v >> MS_SHIFT) as u64, (r >> MS_SHIFT) as u64);
        Some(if hv == hr {
            Rel::Near(((v - r) >> NODE_BITS) as u64)
        } else {
            Rel::Far(hv - hr, (((v ^ r) >> NODE_BITS) & MID_MASK) as u64)
        })
    }

    pub(super) fn len(self) -> usize {
        match self {
            Rel::Near(d) => varint_len(d),
            Rel::Far(ms, mid) => varint_len(ms) + varint_len(mid),
        }
    }

    pub(super) fn put(self, out: &mut Vec<u8>, near: u8, far: u8) {
        match self {
            Rel::Near(d) => {
                out.push(near);
                put_varint(out, d);
            }
            Rel::Far(ms, mid) => {
                out.push(far);
                put_varint(out, ms);
                put_varint(out, mid);
            }
        }
    }
}

pub(super) fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The one form an id takes in a record (forms 2 and 3): a difference from the
/// previous cell's id or from the record's first id, whichever is shorter (the
/// previous on a tie), else in full. A row's cells mostly come from one node:
/// its insert's ids are a few counts apart, and an update's id, however much
/// later, is near the insert's first id in milliseconds. The first id is the
/// second reference because an update of a middle column makes the next
/// column's (older) id smaller than the previous one's.
pub(super) fn form_of(v: u128, prev: Option<u128>, first: Option<u128>) -> IdForm {
    let by_prev = prev.and_then(|p| Rel::of(v, p));
    let by_first = first.filter(|&f| Some(f) != prev).and_then(|f| Rel::of(v, f));
    match (by_prev, by_first) {
        (Some(p), Some(f)) if f.len() < p.len() => IdForm::First(f),
        (Some(p), _) => IdForm::Prev(p),
        (None, Some(f)) => IdForm::First(f),
        (None, None) => IdForm::Full,
    }
}

/// The form of one id in a record (forms 2 and 3).
pub(super) enum IdForm {
    Full,
    Prev(Rel),
    First(Rel),
}

impl IdForm {
    pub(super) fn tag(&self) -> u8 {
        match self {
            IdForm::Full => FULL,
            IdForm::Prev(Rel::Near(_)) => DELTA,
            IdForm::Prev(Rel::Far(..)) => FAR,
            IdForm::First(Rel::Near(_)) => FIRST_DELTA,
            IdForm::First(Rel::Far(..)) => FIRST_FAR,
        }
    }
}

/// An id in forms 2 and 3 ([`form_of`]).
pub(super) fn put_id(out: &mut Vec<u8>, v: u128, prev: Option<u128>, first: Option<u128>) {
    match form_of(v, prev, first) {
        IdForm::Full => {
            out.push(FULL);
            out.extend_from_slice(&v.to_be_bytes());
        }
        IdForm::Prev(rel) => rel.put(out, DELTA, FAR),
        IdForm::First(rel) => rel.put(out, FIRST_DELTA, FIRST_FAR),
    }
}

/// An id in form 1 ([`form_1_tag`]).
pub(super) fn put_id_form_1(out: &mut Vec<u8>, v: u128, prev: Option<u128>) {
    let tag = form_1_tag(v, prev);
    out.push(tag);
    match (tag, prev) {
        (DELTA | WIDE_DELTA, Some(p)) => {
            let delta = (v - p) >> NODE_BITS;
            if tag == WIDE_DELTA {
                put_varint(out, (delta >> 64) as u64);
            }
            put_varint(out, delta as u64);
        }
        _ => out.extend_from_slice(&v.to_be_bytes()),
    }
}

/// The tag form 1 gives an id after `prev`.
pub(super) fn form_1_tag(v: u128, prev: Option<u128>) -> u8 {
    match prev {
        Some(p) if above_same_node(v, p) => {
            if (v - p) >> NODE_BITS >> 64 == 0 {
                DELTA
            } else {
                WIDE_DELTA
            }
        }
        _ => FULL,
    }
}

/// The id a difference `rel` from `base` names, or None for numbers no
/// encoder writes. A near difference may cross a millisecond: form 1 wrote
/// every difference from the cell before that way (the check of the form
/// says whether this record may).
pub(super) fn apply(base: u128, rel: Rel) -> Option<u128> {
    match rel {
        Rel::Near(d) => apply_delta(base, u128::from(d)),
        Rel::Far(ms, mid) => {
            let ms = u128::from(ms);
            let (mid, hb) = (u128::from(mid), base >> MS_SHIFT);
            if ms == 0 || mid > MID_MASK || hb + ms >= 1 << (128 - MS_SHIFT) {
                return None;
            }
            let node = base & ((1u128 << NODE_BITS) - 1);
            Some(((hb + ms) << MS_SHIFT) | ((((base >> NODE_BITS) & MID_MASK) ^ mid) << NODE_BITS) | node)
        }
    }
}

/// `base` plus `delta` above the node, or None when that is zero or overflows.
pub(super) fn apply_delta(base: u128, delta: u128) -> Option<u128> {
    if delta == 0 || delta >> (128 - NODE_BITS) != 0 {
        return None;
    }
    base.checked_add(delta << NODE_BITS)
}
