//! The guest kernel as an uncompressed ELF that QEMU boots through its PVH entry point,
//! extracted once from the kit's bzImage.
//!
//! Why: a bzImage is held twice for the VM's whole life, as QEMU's own copy (kept for a
//! reset, anonymous memory, ~14 MiB) and as the compressed copy the guest decompresses from
//! (guest RAM it touched). An ELF kernel is loaded by QEMU straight into guest RAM from a
//! read-only mapping of the file, whose pages every VM shares through the page cache, and
//! the guest has nothing to decompress: measured on an idle 256 MiB container, 43 MiB less
//! host memory (PSS) and a shorter boot.

use crate::{Error, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Offset of the setup header's `payload_offset` / `payload_length` (boot protocol 2.08+).
const PAYLOAD_FIELDS: usize = 0x248;
/// Offset of `setup_sects`; the protected-mode part starts after `(setup_sects + 1) * 512`.
const SETUP_SECTS: usize = 0x1f1;
/// The setup header's magic `HdrS` and where it is.
const HEADER_MAGIC: (&[u8], usize) = (b"HdrS", 0x202);
/// LZ4's legacy frame magic, the format the kernel's `CONFIG_KERNEL_LZ4` writes.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// A legacy LZ4 block never decompresses to more than this.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The ELF note Xen and QEMU read the 32-bit PVH entry point from (`XEN_ELFNOTE_PHYS32_ENTRY`).
const PVH_NOTE: u32 = 18;

/// The PVH kernel beside `bzimage` (`vmlinux` in the same dir), extracted on first use.
/// `None` when this kernel cannot be booted that way (another compression than LZ4 or gzip,
/// no PVH entry point, or a kit dir this user cannot write): then the bzImage is used.
pub fn pvh_kernel(bzimage: &Path) -> Option<PathBuf> {
    let out = bzimage.with_file_name("vmlinux");
    if out.is_file() {
        return Some(out);
    }
    match extract(bzimage, &out) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::info!(kernel = %bzimage.display(), "booting the bzImage: {e}");
            None
        }
    }
}

/// Writes `bzimage`'s kernel as an ELF to `out` (whole or not at all), checking it has a PVH
/// entry point.
fn extract(bzimage: &Path, out: &Path) -> Result<()> {
    let image =
        fs::read(bzimage).map_err(|e| Error::io(format!("reading {}", bzimage.display()), e))?;
    let mut elf = decompress(payload(&image)?)?;
    check_pvh(&elf)?;
    trim_zero_tails(&mut elf)?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    std::io::Write::write_all(&mut tmp, &elf)
        .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    // Readable by every VM's own uid, as the bzImage is (a temp file starts 0600).
    let readable = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    fs::set_permissions(tmp.path(), readable)
        .map_err(|e| Error::io(format!("making {} readable", out.display()), e))?;
    tmp.persist(out)
        .map_err(|e| Error::io(format!("writing {}", out.display()), e.error))?;
    Ok(())
}

/// The compressed kernel inside a bzImage, as its setup header locates it.
fn payload(image: &[u8]) -> Result<&[u8]> {
    let bad = |why: &str| Error::Invalid(format!("not a bzImage the PVH loader can use: {why}"));
    let (magic, at) = HEADER_MAGIC;
    if image.get(at..at + magic.len()) != Some(magic) {
        return Err(bad("no setup header"));
    }
    let word = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let sects = match image.get(SETUP_SECTS) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let (offset, length) = word(PAYLOAD_FIELDS)
        .zip(word(PAYLOAD_FIELDS + 4))
        .ok_or_else(|| bad("header too short"))?;
    let start = (sects + 1) * 512 + offset;
    image
        .get(start..start + length)
        .ok_or_else(|| bad("payload outside the file"))
}

/// Decompresses the payload (LZ4 legacy or gzip, the two Debian's x86 kernels use).
fn decompress(payload: &[u8]) -> Result<Vec<u8>> {
    if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        return lz4_legacy(payload);
    }
    if payload.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(|e| Error::Invalid(format!("the kernel's gzip payload is corrupt: {e}")))?;
        return Ok(out);
    }
    Err(Error::Invalid(format!(
        "its payload is compressed in a format zos does not read (magic {:02x?})",
        &payload[..payload.len().min(4)]
    )))
}

/// LZ4's legacy frame: the magic, then blocks each prefixed by its compressed size; the
/// kernel's build appends the uncompressed size, which checks the result.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>> {
    let corrupt =
        |why: String| Error::Invalid(format!("the kernel's LZ4 payload is corrupt: {why}"));
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::new();
    let mut at = 4;
    while let Some(size) = word(at) {
        if size == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let Some(block) = payload.get(at + 4..at + 4 + size as usize) else {
            break; // the trailing size field
        };
        let start = out.len();
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[start..])
            .map_err(|e| corrupt(format!("block at byte {at}: {e}")))?;
        out.truncate(start + n);
        at += 4 + size as usize;
    }
    let expected = payload.len().checked_sub(4).and_then(word);
    if expected != Some(out.len() as u32) {
        return Err(corrupt(format!(
            "{} bytes out, the image says {expected:?}",
            out.len()
        )));
    }
    Ok(out)
}

/// Fails unless `elf` is an x86-64 ELF with a PVH entry point note.
fn check_pvh(elf: &[u8]) -> Result<()> {
    let parsed = goblin::elf::Elf::parse(elf)
        .map_err(|e| Error::Invalid(format!("the decompressed kernel is not an ELF: {e}")))?;
    let has_pvh = parsed
        .iter_note_headers(elf)
        .into_iter()
        .flatten()
        .flatten()
        .any(|n| n.n_type == PVH_NOTE && n.name == "Xen");
    if parsed.header.e_machine != goblin::elf::header::EM_X86_64 || !has_pvh {
        return Err(Error::Invalid(
            "the kernel has no PVH entry point (CONFIG_PVH)".into(),
        ));
    }
    Ok(())
}

/// Shortens each loadable segment's file part by the zero bytes it ends with (its memory
/// size stays): a loader zero-fills past the file part anyway, and QEMU keeps every file page
/// it read mapped for the VM's life. The kernel's last segment ends in .bss, .brk and
/// .init.scratch, 11 MiB of zeros in the file.
fn trim_zero_tails(elf: &mut [u8]) -> Result<()> {
    let parsed = goblin::elf::Elf::parse(elf)
        .map_err(|e| Error::Invalid(format!("the decompressed kernel is not an ELF: {e}")))?;
    let (phoff, phentsize) = (
        parsed.header.e_phoff as usize,
        usize::from(parsed.header.e_phentsize),
    );
    let loads: Vec<(usize, std::ops::Range<usize>)> = parsed
        .program_headers
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|(i, ph)| (i, ph.file_range()))
        .collect();
    for (i, range) in loads {
        let data = elf.get(range.clone()).ok_or_else(|| {
            Error::Invalid(format!("the kernel's segment {i} lies outside the file"))
        })?;
        let filesz = data
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        // Elf64_Phdr.p_filesz is the sixth field, at byte 32.
        let at = phoff + i * phentsize + 32;
        let field = elf.get_mut(at..at + 8).ok_or_else(|| {
            Error::Invalid(format!(
                "the kernel's program header {i} lies outside the file"
            ))
        })?;
        field.copy_from_slice(&(filesz as u64).to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file around `payload`: setup header, one setup sector, the payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[SETUP_SECTS] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[PAYLOAD_FIELDS..PAYLOAD_FIELDS + 4].copy_from_slice(&0u32.to_le_bytes());
        let len = payload.len() as u32;
        image[PAYLOAD_FIELDS + 4..PAYLOAD_FIELDS + 8].copy_from_slice(&len.to_le_bytes());
        image.extend_from_slice(payload);
        image
    }

    /// `data` as the kernel's build writes it with LZ4: legacy frame + size appended.
    fn lz4_payload(data: &[u8]) -> Vec<u8> {
        let mut p = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            p.extend_from_slice(&(block.len() as u32).to_le_bytes());
            p.extend_from_slice(&block);
        }
        p.extend_from_slice(&(data.len() as u32).to_le_bytes());
        p
    }

    #[test]
    fn an_lz4_payload_comes_back_whole_across_blocks() {
        let data: Vec<u8> = (0..LZ4_LEGACY_BLOCK + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let image = bzimage(&lz4_payload(&data));
        assert_eq!(decompress(payload(&image).unwrap()).unwrap(), data);
    }

    #[test]
    fn a_truncated_or_wrong_payload_is_refused() {
        let data = vec![7u8; 4096];
        let mut p = lz4_payload(&data);
        let n = p.len();
        p[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(decompress(&p).is_err(), "size check");
        assert!(decompress(b"BZh9....").is_err(), "unknown compression");
        assert!(payload(&[0u8; 100]).is_err(), "no header");
        let mut image = bzimage(&p);
        image.truncate(image.len() - 10);
        assert!(payload(&image).is_err(), "payload cut short");
    }

    #[test]
    fn an_elf_without_a_pvh_note_is_refused() {
        // This test binary is an x86-64 ELF with no Xen notes.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = check_pvh(&me).unwrap_err().to_string();
        assert!(e.contains("PVH"), "{e}");
        assert!(check_pvh(b"not an elf").is_err());
    }

    #[test]
    fn the_kits_kernel_has_a_pvh_entry_point() {
        let Ok(kit) = crate::bootkit::BootKit::locate(&crate::bootkit::default_dir()) else {
            zos_testkit::skip("no boot kit: run scripts/bootkit");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("vmlinuz");
        fs::copy(&kit.bzimage, &bz).unwrap();
        let elf = pvh_kernel(&bz).expect("the kit's kernel boots through PVH");
        assert_eq!(elf, dir.path().join("vmlinux"));
        let bytes = fs::read(&elf).unwrap();
        check_pvh(&bytes).unwrap();
        // Every loadable segment ends in a non-zero byte once trimmed, and the last one, which
        // ends in .bss, is left with a file part smaller than its memory size.
        let parsed = goblin::elf::Elf::parse(&bytes).unwrap();
        let loads: Vec<_> = parsed
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == goblin::elf::program_header::PT_LOAD)
            .collect();
        for ph in &loads {
            let r = ph.file_range();
            assert!(r.is_empty() || bytes[r.end - 1] != 0, "{ph:?}");
        }
        let last = loads.last().unwrap();
        assert!(last.p_filesz < last.p_memsz, "{last:?}");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&elf).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644, "every VM's uid reads it");
    }
}
