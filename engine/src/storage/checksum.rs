//! Checksums of stored bytes: enough to catch a damaged, truncated or mixed-up file (not an
//! attacker).
//!
//! New checkpoint files are checked with CRC-32 ([`crc32`], the `crc32fast` crate, SIMD where
//! the CPU has it). FNV-1a 64 ([`fnv1a64`], the `fnv` crate) stays where its values are
//! already on disk or must not change: checkpoints of format 0, the daemon's snapshot
//! pointers, plan fingerprints and the names derived from them.

use std::hash::Hasher;

/// The checksum of a checkpoint file, by the algorithm its format version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// FNV-1a 64: checkpoints of format 0 (written before formats had a version).
    Fnv1a64,
    /// CRC-32 (IEEE): checkpoints of format 1 onwards.
    Crc32,
}

impl Algorithm {
    /// The checksum of `bytes`.
    pub fn of(self, bytes: &[u8]) -> u64 {
        match self {
            Algorithm::Fnv1a64 => fnv1a64(bytes),
            Algorithm::Crc32 => u64::from(crc32(bytes)),
        }
    }

    /// Hex digits of a checksum: 16 for FNV-1a 64, 8 for CRC-32.
    pub fn hex(self, checksum: u64) -> String {
        match self {
            Algorithm::Fnv1a64 => format!("{checksum:016x}"),
            Algorithm::Crc32 => format!("{checksum:08x}"),
        }
    }
}

/// CRC-32 (IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The values the hand-written FNV-1a wrote before: old checkpoints still check.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(Algorithm::Crc32.hex(0xcbf4_3926), "cbf43926");
        assert_eq!(Algorithm::Fnv1a64.hex(1), "0000000000000001");
    }
}
