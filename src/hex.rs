//! Lowercase hexadecimal text: token hashes, peer RPC signatures, and the `_hex` fields of keys
//! and values that are not UTF-8 in the HTTP API's JSON.
//!
//! Signatures and token hashes run on every request that carries a peer secret or a token, so
//! encoding is written out rather than built from `format!` per byte (one string per byte).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hexadecimal, two digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The bytes of hexadecimal `text` (either case), or `None` when it has an odd length, a
/// character that is not a hex digit, or more than `bytes_max` bytes' worth of digits.
pub fn decode(text: &[u8], bytes_max: usize) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() / 2 > bytes_max {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_byte_as_format_does() {
        let every_byte: Vec<u8> = (0..=255).collect();
        let expected: String = every_byte.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode(&every_byte), expected);
        assert_eq!(encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decode_inverts_encode_and_accepts_upper_case() {
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(
            decode(encode(&every_byte).as_bytes(), 256),
            Some(every_byte)
        );
        assert_eq!(decode(b"ABcd", 2), Some(vec![0xab, 0xcd]));
    }

    #[test]
    fn decode_refuses_odd_length_non_digits_and_too_many_bytes() {
        assert_eq!(decode(b"abc", 8), None);
        assert_eq!(decode(b"zz", 8), None);
        assert_eq!(decode(b"+1", 8), None);
        assert_eq!(decode(b"0011", 1), None);
        assert_eq!(decode(b"0011", 2), Some(vec![0x00, 0x11]));
    }
}
