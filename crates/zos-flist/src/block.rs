//! The block pipeline shared with ThreeFold's `rfs`.
//!
//! A file is cut into [`BLOCK_SIZE`] pieces. For each piece:
//! `key = BLAKE2b-256(plain)`, `cipher = AES-256-GCM(key, nonce = key[0..12], snappy_raw(plain))`,
//! `id = BLAKE2b-256(cipher)`. Stores keep `cipher` under `id`; the flist keeps `(id, key)`.
//! Because key and nonce derive from the content, identical pieces give identical blocks
//! (convergent encryption), which is what makes deduplication across flists work.
//!
//! # Which check covers what, on a read
//!
//! [`decode`] is the only way from stored bytes to plaintext, and it runs two checks:
//!
//! - **The AES-GCM tag** authenticates the stored bytes under the key the flist records: a
//!   flipped bit, a truncated block, or another block's bytes served under this id all fail it
//!   ([`BlockError::Decrypt`]). Once the tag verified, the stored bytes are exactly those that
//!   were sealed under this key, so hashing them again to compare with the id would add no
//!   guarantee; the id is only the address to fetch from, and is not re-hashed on reads.
//! - **The plaintext hashing to its key** is what binds content to its address: the tag proves
//!   the bytes were sealed under the key, not that the key is the hash of what was sealed
//!   (whoever knows a key can seal anything under it). Hashing the decompressed plaintext and
//!   comparing it with the key ([`BlockError::KeyMismatch`]) makes a wrong byte impossible
//!   whatever the store or the sealer did. This is the one hash computed per block read.
//!
//! Snappy's own checks only turn malformed input into [`BlockError::Decompress`] instead of a
//! panic; they guarantee nothing the two checks above do not. Cached plaintext (see
//! `cache.rs`) is checked against its key again when read back from disk, because the disk
//! cache is outside the tag's protection; a block decoded in this process is not hashed twice.
//!
//! The primitives are picked for speed, not format: AES-256-GCM is ring's (AES-NI/VAES and
//! carry-less multiply in one pass) and BLAKE2b is `blake2b_simd` (AVX2). Both produce exactly
//! the bytes of the reference implementations; the known-answer tests below pin that down.

use ring::aead;
use std::fmt;

/// Size of the plaintext pieces a file is cut into (the last piece may be shorter).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// How many blocks a file of `size` bytes is cut into.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

/// Plaintext length of block `index` of a file of `size` bytes: every block is full but the
/// last. A block of any other length would shift the bytes after it.
pub fn block_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * BLOCK_SIZE as u64)
        .min(BLOCK_SIZE as u64)
}

/// A 32-byte BLAKE2b-256 digest: a block id or a block key.
pub type Hash = [u8; 32];

/// Where one piece of a file lives (`id`) and how to open it (`key`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// BLAKE2b-256 of the stored (compressed, encrypted) bytes; the store key.
    pub id: Hash,
    /// BLAKE2b-256 of the plaintext; the AES-256-GCM key.
    pub key: Hash,
}

impl fmt::Debug for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}", hex::encode(self.id))
    }
}

impl BlockRef {
    /// The id in lowercase hex, as stores and error messages name it.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Why stored bytes could not be turned back into the plaintext they claim to be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// AES-GCM authentication failed: the bytes are damaged, or not this block.
    #[error("corrupt block: authentication failed (damaged in the store, or not this block)")]
    Decrypt,
    /// The decrypted bytes are not valid raw snappy.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The plaintext does not hash to the key recorded in the flist.
    #[error("plaintext does not match its key")]
    KeyMismatch,
}

/// BLAKE2b with a 32-byte output (not a truncated BLAKE2b-512: the output length is part of the
/// parameter block, so the two differ).
pub fn hash(data: &[u8]) -> Hash {
    let digest = blake2b_simd::Params::new().hash_length(32).hash(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_bytes());
    out
}

/// The AEAD key and nonce of a block, both derived from its key.
fn cipher_for(key: &Hash) -> (aead::LessSafeKey, aead::Nonce) {
    // Both lengths are fixed by the types (32-byte key, 12 of its bytes as nonce), so these
    // constructors cannot fail.
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("AES-256 key is 32 bytes");
    let nonce = aead::Nonce::try_assume_unique_for_key(&key[..aead::NONCE_LEN])
        .expect("AES-GCM nonce is 12 bytes");
    (aead::LessSafeKey::new(unbound), nonce)
}

/// Turns one plaintext piece into its stored form, returning where it lives and the bytes.
pub fn encode(plain: &[u8]) -> (BlockRef, Vec<u8>) {
    let key = hash(plain);
    let mut sealed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .expect("snappy compresses any input below 4 GiB; blocks are 512 KiB");
    let (cipher, nonce) = cipher_for(&key);
    // The nonce repeats only for identical plaintext, which then gives identical ciphertext:
    // convergent encryption is the format, not a misuse.
    cipher
        .seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut sealed)
        .expect("AES-GCM encryption of a 512 KiB buffer cannot fail");
    let id = hash(&sealed);
    (BlockRef { id, key }, sealed)
}

/// Opens stored bytes (decrypting them in place), checking the AEAD tag, snappy and the key.
/// Never returns bytes that are not exactly the plaintext the block was made from: the
/// plaintext must hash to the key the flist records. The stored bytes are not hashed against
/// the id: the tag already covers them (see the module doc).
pub fn decode(block: &BlockRef, mut stored: Vec<u8>) -> Result<Vec<u8>, BlockError> {
    let (cipher, nonce) = cipher_for(&block.key);
    let compressed = cipher
        .open_in_place(nonce, aead::Aad::empty(), &mut stored)
        .map_err(|_| BlockError::Decrypt)?;
    let plain = snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|e| BlockError::Decompress(e.to_string()))?;
    if hash(&plain) != block.key {
        return Err(BlockError::KeyMismatch);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers: if any of these change, flists made before the change stop reading.
    // The first pair was recorded by ThreeFold's rfs (see shared/fixtures/rfs: etc/hostname).
    #[test]
    fn known_answer_matches_reference_tool() {
        let (block, stored) = encode(b"fixture\n");
        assert_eq!(
            hex::encode(block.key),
            "d0e28f100f8ccd19f34375439e7c0303161827e6cfd8e81ebf5829eea5941ae5"
        );
        assert_eq!(
            hex::encode(block.id),
            "1859fcc6e92c03e5d98789a64005f111b4d70041856407f3dde53905bd3c5292"
        );
        assert_eq!(stored.len(), 26);
    }

    #[test]
    fn known_answer_full_block() {
        let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        let (block, stored) = encode(&plain);
        assert_eq!(hex::encode(block.key), KAT_FULL_KEY);
        assert_eq!(hex::encode(block.id), KAT_FULL_ID);
        assert_eq!(decode(&block, stored.clone()).unwrap(), plain);
    }

    const KAT_FULL_KEY: &str = "027261138272f669975c00d5382550ca78d38de640eb9f73421656bdf09ba757";
    const KAT_FULL_ID: &str = "c8caf12f5b4e016d33f5430e46ade07850f41f96a729f842fcf7c071b599e7c7";

    #[test]
    fn block_counts_and_lengths_follow_the_size() {
        let bs = BLOCK_SIZE as u64;
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(bs), 1);
        assert_eq!(block_count(bs + 1), 2);
        assert_eq!(block_len(bs + 1, 0), bs);
        assert_eq!(block_len(bs + 1, 1), 1);
        assert_eq!(block_len(bs, 1), 0);
    }

    #[test]
    fn empty_block_round_trips() {
        let (block, stored) = encode(b"");
        assert_eq!(decode(&block, stored.clone()).unwrap(), b"");
    }

    #[test]
    fn flipped_byte_is_detected() {
        let (block, mut stored) = encode(b"some content worth protecting");
        stored[3] ^= 0x01;
        assert_eq!(decode(&block, stored.clone()), Err(BlockError::Decrypt));
    }

    #[test]
    fn another_blocks_bytes_are_refused() {
        let (a, _) = encode(b"the block the flist names");
        let (_, other) = encode(b"a different block");
        assert_eq!(decode(&a, other), Err(BlockError::Decrypt));
    }

    #[test]
    fn wrong_key_is_detected() {
        let (mut block, stored) = encode(b"some content worth protecting");
        block.key[0] ^= 0x80;
        assert_eq!(decode(&block, stored.clone()), Err(BlockError::Decrypt));
    }

    #[test]
    fn simd_blake2b_matches_the_reference_crate() {
        use blake2::Digest;
        // Around the 128-byte block boundary, the 4-block AVX2 stride and a full block.
        for len in [
            0, 1, 63, 127, 128, 129, 255, 256, 511, 512, 513, 1000, 4096, BLOCK_SIZE,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let reference: Hash = blake2::Blake2b256::digest(&data).into();
            assert_eq!(hash(&data), reference, "length {len}");
        }
    }

    #[test]
    fn plaintext_not_hashing_to_its_key_is_refused() {
        // Sealed under a key that is not the plaintext's hash: the tag verifies, and only the
        // key check stands between the reader and the wrong bytes.
        let (mut forged, _) = encode(b"what the flist promises");
        let (cipher, nonce) = cipher_for(&forged.key);
        let mut sealed = snap::raw::Encoder::new()
            .compress_vec(b"something else entirely")
            .unwrap();
        cipher
            .seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut sealed)
            .unwrap();
        forged.id = hash(&sealed);
        assert_eq!(decode(&forged, sealed), Err(BlockError::KeyMismatch));
    }
}
