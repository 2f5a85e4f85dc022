//! Bytes as lowercase hex: how sha256 digests are written (`sha256:<hex>`,
//! blob names, template fingerprints) and so compared. A shared leaf: the
//! image code and the backends both write digests.

use std::fmt::Write as _;

/// Two lowercase hex digits a byte, most significant first.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn bytes_become_two_lowercase_digits_each() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
