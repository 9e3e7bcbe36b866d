//! Content digests (`sha256:<hex>`) and a reader that checks one while the bytes stream past,
//! so that nothing from an image is trusted without having been hashed, and no blob has to be
//! held in memory or on disk to be checked.

use sha2::Digest as _;
use std::fmt;
use std::io::{self, Read};

/// A parsed, validated content digest. Only algorithms the OCI spec registers are accepted, and
/// the hex part must have the algorithm's exact length, so a digest is always safe to use as a
/// file name (`blobs/sha256/<hex>`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl Digest {
    /// Parses `algorithm:hex`; the error says what is wrong with it.
    pub(crate) fn parse(s: &str) -> Result<Digest, String> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a digest (expected sha256:<64 hex digits>)"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(format!("{s:?}: unsupported digest algorithm {alg:?}")),
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(format!(
                "{s:?} is not a valid {alg} digest (expected {} lowercase hex digits)",
                algorithm.hex_len()
            ));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub(crate) fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    /// The algorithm name, for paths such as `blobs/sha256/…`.
    pub(crate) fn algorithm(&self) -> &'static str {
        self.algorithm.name()
    }

    /// The hex part.
    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }

    /// `sha256:` and the first 12 hex digits, for progress lines.
    pub(crate) fn short(&self) -> String {
        format!("{}:{}", self.algorithm.name(), &self.hex[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(&mut self, algorithm: Algorithm) -> Digest {
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize_reset()),
            Hasher::Sha512(h) => hex::encode(h.finalize_reset()),
        };
        Digest { algorithm, hex }
    }
}

/// Why a blob was refused, carried inside an [`io::Error`] so that it survives the layers of
/// decompressor and tar reader above the [`Verify`] reader that found it.
#[derive(Debug)]
pub(crate) struct Mismatch {
    /// The digest the blob should have had.
    pub expected: String,
    /// What it was instead: `hashes to sha256:…`, or a size problem.
    pub found: String,
    /// Whether this is the digest of the uncompressed layer (a `diff_id` from the image
    /// config) rather than of the blob as stored.
    pub uncompressed: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}content does not match its digest {} ({})",
            if self.uncompressed {
                "uncompressed "
            } else {
                ""
            },
            self.expected,
            self.found
        )
    }
}

impl std::error::Error for Mismatch {}

impl Mismatch {
    /// The mismatch inside an I/O error, if that is what it is.
    pub(crate) fn find(e: &io::Error) -> Option<&Mismatch> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Mismatch>())
    }
}

/// Hashes everything read through it. At end of stream it compares the digest (and the size,
/// when one was declared) with what was expected and fails the read with a [`Mismatch`] if they
/// differ, so a corrupt blob can never be read to its end without an error. Reading past the
/// declared size fails at once, so a server cannot feed an endless stream.
pub(crate) struct Verify<R> {
    inner: R,
    hasher: Hasher,
    algorithm: Algorithm,
    expected: Option<Digest>,
    size: Option<u64>,
    read: u64,
    uncompressed: bool,
    /// The digest computed at end of stream.
    actual: Option<Digest>,
    /// Why the stream was refused, repeated on every later read.
    failed: Option<String>,
}

impl<R: Read> Verify<R> {
    /// Checks `inner` against `expected` (when known; sha256 is computed otherwise) and against
    /// the declared `size` (when known).
    pub(crate) fn new(
        inner: R,
        expected: Option<Digest>,
        size: Option<u64>,
        uncompressed: bool,
    ) -> Verify<R> {
        let algorithm = expected.as_ref().map_or(Algorithm::Sha256, |d| d.algorithm);
        Verify {
            inner,
            hasher: Hasher::new(algorithm),
            algorithm,
            expected,
            size,
            read: 0,
            uncompressed,
            actual: None,
            failed: None,
        }
    }

    /// The digest of the whole stream, once it has been read to its end.
    pub(crate) fn digest(&self) -> Option<&Digest> {
        self.actual.as_ref()
    }

    fn mismatch(&mut self, found: String) -> io::Error {
        self.failed = Some(found.clone());
        io::Error::new(
            io::ErrorKind::InvalidData,
            Mismatch {
                expected: self
                    .expected
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), |d| d.to_string()),
                found,
                uncompressed: self.uncompressed,
            },
        )
    }
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(found) = self.failed.clone() {
            return Err(self.mismatch(found));
        }
        if self.actual.is_some() || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(size) = self.size {
            if self.read > size {
                return Err(self.mismatch(format!(
                    "it is longer than the {size} bytes its descriptor declares"
                )));
            }
        }
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        let actual = self.hasher.finish(self.algorithm);
        if let Some(size) = self.size {
            if self.read != size {
                return Err(self.mismatch(format!(
                    "it is {} bytes, its descriptor declares {size}",
                    self.read
                )));
            }
        }
        if self.expected.as_ref().is_some_and(|e| *e != actual) {
            return Err(self.mismatch(format!("it hashes to {actual}")));
        }
        self.actual = Some(actual);
        Ok(0)
    }
}

/// Reads `reader` to its end into memory, refusing more than `limit` bytes: for manifests and
/// configs, which are small, while layers are always streamed.
pub(crate) fn read_limited(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes, far more than any manifest or config"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Digest::parse(EMPTY).unwrap().to_string(), EMPTY);
        assert!(Digest::parse("sha256:../../etc").is_err());
        assert!(Digest::parse("md5:abcd").is_err());
        assert!(Digest::parse(&EMPTY.to_uppercase()).is_err());
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY);
    }

    #[test]
    fn verify_reader_checks_digest_and_size_at_end() {
        let good = Digest::sha256_of(b"hello");
        let mut out = Vec::new();
        let mut v = Verify::new(&b"hello"[..], Some(good.clone()), Some(5), false);
        v.read_to_end(&mut out).unwrap();
        assert_eq!(v.digest(), Some(&good));

        let mut v = Verify::new(&b"hellO"[..], Some(good.clone()), None, false);
        let e = v.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(Mismatch::find(&e).unwrap().found.contains("hashes to"));

        let mut v = Verify::new(&b"hello!"[..], Some(good.clone()), Some(5), false);
        let e = v.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(Mismatch::find(&e).unwrap().found.contains("longer"));

        let mut v = Verify::new(&b"hell"[..], Some(good), Some(5), false);
        let e = v.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(Mismatch::find(&e).unwrap().found.contains("4 bytes"));
    }

    #[test]
    fn read_limited_refuses_big_input() {
        assert_eq!(read_limited(&b"abc"[..], 3).unwrap(), b"abc");
        assert!(read_limited(&b"abcd"[..], 3).is_err());
    }
}
