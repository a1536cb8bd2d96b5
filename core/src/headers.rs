//! Decoding the proxy-wasm serialized header map without trusting it.
//!
//! The SDK's own decoder panics on a non-UTF-8 name; this one returns `None` on any
//! inconsistency and yields raw bytes.
//!
//! Layout: `u32 count`, then `count` pairs of `u32 name_len, u32 value_len`, then for each pair
//! `name NUL value NUL` (all integers little-endian).

/// The (name, value) pairs of a serialized header map, or `None` if it is malformed.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    let mut data = sizes_end;
    let mut pairs = Vec::with_capacity(count.min(256));
    for n in 0..count {
        let at = 4 + n * 8;
        let name_len = read_u32(bytes, at)? as usize;
        let value_len = read_u32(bytes, at + 4)? as usize;
        let (name, after_name) = field(bytes, data, name_len)?;
        let (value, after_value) = field(bytes, after_name, value_len)?;
        data = after_value;
        pairs.push((name, value));
    }
    // Every byte accounted for: nothing may follow the last pair.
    (data == bytes.len()).then_some(pairs)
}

/// Serializes (name, value) pairs into the proxy-wasm header map layout.
pub fn encode_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.as_ref().len() + v.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len32(pairs.len()));
    for (n, v) in pairs {
        out.extend_from_slice(&len32(n.as_ref().len()));
        out.extend_from_slice(&len32(v.as_ref().len()));
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// `len` bytes at `at`, which must be followed by their NUL separator; returns them and where
/// the next field starts.
fn field(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    let value = bytes.get(at..end)?;
    match bytes.get(end) {
        Some(0) => Some((value, end + 1)),
        _ => None,
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    let array: [u8; 4] = slice.try_into().ok()?;
    Some(u32::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/api"),
            (b"authorization", b"Bearer \xff"),
            (b"x", b""),
        ];
        assert_eq!(decode_pairs(&encode_pairs(&pairs)).unwrap(), pairs);
        assert_eq!(decode_pairs(&[]).unwrap(), vec![]);
    }

    #[test]
    fn truncated_or_lying_input_is_refused() {
        let good = encode_pairs(&[(b"a", b"b")]);
        for cut in 1..good.len() {
            assert!(decode_pairs(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pairs(&huge).is_none());
    }

    #[test]
    fn a_missing_separator_is_refused() {
        let good = encode_pairs(&[(b"ab", b"cd")]);
        // Layout: count, two lengths, then `ab\0cd\0`.
        let name_nul = 4 + 8 + 2;
        let mut bad = good.clone();
        bad[name_nul] = b'x';
        assert!(decode_pairs(&bad).is_none(), "name separator");
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert!(decode_pairs(&bad).is_none(), "value separator");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut long = encode_pairs(&[(b"a", b"b")]);
        long.push(0);
        assert!(decode_pairs(&long).is_none());
    }
}
