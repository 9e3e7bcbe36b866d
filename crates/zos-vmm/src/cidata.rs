//! The NoCloud seed for VM-mode guests: stock cloud images run cloud-init, which looks for a
//! FAT (or ISO 9660) filesystem labelled `CIDATA` and reads its configuration from the files
//! `meta-data`, `user-data` and, optionally, `network-config` in its root directory.
//!
//! [`write_seed`] builds that filesystem as a small disk image with `fatfs`, so no external
//! tool (`mkfs.vfat`, `genisoimage`, `cloud-localds`) has to be installed on the host. The
//! image is attached to the guest as an extra read-only drive.
//!
//! The YAML written here is generated, never templated: every free-form value is written as
//! an escaped double-quoted scalar, so an instance id or a key's comment cannot inject YAML
//! structure.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Volume label cloud-init searches for (`cidata` or `CIDATA`), padded to the 11 bytes of a
/// FAT label.
const LABEL: [u8; 11] = *b"CIDATA     ";

/// Smallest image written: small enough to cost nothing, big enough for any ordinary seed.
const MIN_IMAGE_SIZE: u64 = 1 << 20;

/// Largest image written. The seed is configuration, not a way to ship payloads; staying
/// under 512 MiB also keeps the filesystem FAT12/16, which every guest kernel reads.
const MAX_IMAGE_SIZE: u64 = 64 << 20;

/// What the guest's cloud-init is told on first boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    /// `instance-id` in `meta-data`. cloud-init reruns its per-instance modules whenever this
    /// changes, and uses it as a directory name in the guest, so it must be stable for a VM
    /// and free of `/`, whitespace and control characters.
    pub instance_id: String,
    /// `local-hostname` in `meta-data` (and `hostname` in the generated `user-data`): a DNS
    /// name of labels made of ASCII letters, digits and `-`.
    pub hostname: String,
    /// OpenSSH public keys (one `authorized_keys` line each) for the image's default user.
    /// Surrounding whitespace, such as the newline ending a `.pub` file, is trimmed; a line
    /// break inside a key is an error.
    pub ssh_keys: Vec<String>,
    /// `user-data`, written verbatim (a `#cloud-config` document, a script, a MIME
    /// multipart…). When `None`, a `#cloud-config` setting the hostname and keys is written.
    pub user_data: Option<String>,
    /// `network-config` (cloud-init network config v1 or v2), written verbatim when given;
    /// without it cloud-init falls back to DHCP on the first NIC.
    pub network_config: Option<String>,
}

/// What can go wrong writing a NoCloud seed.
#[derive(Debug, thiserror::Error)]
pub enum CidataError {
    /// The hostname is not a valid DNS name.
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname {
        /// The hostname as given.
        hostname: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The instance id cannot be used.
    #[error("invalid instance id {instance_id:?}: {reason}")]
    InvalidInstanceId {
        /// The instance id as given.
        instance_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An SSH key is not a single `authorized_keys` line.
    #[error("SSH key #{index} is invalid: {reason}")]
    InvalidSshKey {
        /// Position of the key in [`Seed::ssh_keys`], from 0.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The content does not fit in the largest seed image written.
    #[error(
        "the NoCloud seed needs a {needed}-byte image, more than the {max}-byte maximum \
         (is user-data unusually large?)"
    )]
    TooLarge {
        /// Image size the content would need.
        needed: u64,
        /// The largest image written.
        max: u64,
    },
    /// Creating or writing the image failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

/// Writes `seed` as a FAT image labelled `CIDATA` at `path`, replacing any file there.
///
/// The image is built in a temp file next to `path` and renamed into place, so `path` is
/// either the complete new seed or untouched, and a failure leaves no temp file behind.
pub fn write_seed(seed: &Seed, path: &Path) -> Result<(), CidataError> {
    let ssh_keys = validate(seed)?;
    let meta_data = render_meta_data(seed, &ssh_keys);
    let user_data = match &seed.user_data {
        Some(user_data) => user_data.clone(),
        None => render_user_data(seed, &ssh_keys),
    };
    let mut files: Vec<(&str, &[u8])> = vec![
        ("meta-data", meta_data.as_bytes()),
        ("user-data", user_data.as_bytes()),
    ];
    if let Some(network_config) = &seed.network_config {
        files.push(("network-config", network_config.as_bytes()));
    }
    let size = image_size(&files)?;

    let io_err = |what: &str, source| CidataError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    let mut tmp =
        crate::fsutil::temp_next_to(path).map_err(|e| io_err("creating a temp file for", e))?;
    build_image(tmp.as_file_mut(), size, &files)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_err("building NoCloud seed", e))?;
    tmp.persist(path)
        .map_err(|e| io_err("renaming NoCloud seed into", e.error))?;
    tracing::debug!(path = %path.display(), size, "wrote NoCloud seed");
    Ok(())
}

/// Checks the seed and returns its SSH keys trimmed, ready to be written.
fn validate(seed: &Seed) -> Result<Vec<&str>, CidataError> {
    validate_hostname(&seed.hostname)?;
    validate_instance_id(&seed.instance_id)?;
    seed.ssh_keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let key = key.trim();
            let reason = if key.is_empty() {
                Some("it is empty")
            } else if key.contains(['\n', '\r']) {
                // Two keys in one string would reach authorized_keys as two lines, which
                // is not what the caller said; a list entry is one key.
                Some("it contains a line break (pass one key per entry)")
            } else if key.chars().any(char::is_control) {
                Some("it contains a control character")
            } else {
                None
            };
            match reason {
                Some(reason) => Err(CidataError::InvalidSshKey { index, reason }),
                None => Ok(key),
            }
        })
        .collect()
}

/// Accepts a DNS name (RFC 1123): dot-separated labels of 1 to 63 ASCII letters, digits and
/// hyphens, not starting or ending with a hyphen, 253 characters at most.
fn validate_hostname(hostname: &str) -> Result<(), CidataError> {
    let invalid = |reason: String| CidataError::InvalidHostname {
        hostname: hostname.to_string(),
        reason,
    };
    if hostname.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if hostname.len() > 253 {
        return Err(invalid(format!(
            "it is {} characters long, the maximum is 253",
            hostname.len()
        )));
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "it has an empty label (leading, trailing or double dot)".into(),
            ));
        }
        if label.len() > 63 {
            return Err(invalid(format!(
                "label {label:?} is {} characters long, the maximum is 63",
                label.len()
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(invalid(format!(
                "{c:?} is not allowed (only letters, digits, '-' and '.')"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(format!("label {label:?} starts or ends with '-'")));
        }
    }
    Ok(())
}

/// cloud-init stores per-instance state under `/var/lib/cloud/instances/<instance-id>`, so the
/// id has to be a usable file name.
fn validate_instance_id(instance_id: &str) -> Result<(), CidataError> {
    let reason = if instance_id.is_empty() {
        Some("it is empty")
    } else if instance_id.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if instance_id == "." || instance_id == ".." {
        Some("it is not a usable directory name")
    } else if instance_id.contains('/') {
        Some("it contains '/'")
    } else if instance_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        Some("it contains whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CidataError::InvalidInstanceId {
            instance_id: instance_id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `meta-data`. The keys also go here as `public-keys` (cloud-init's datasources read it for
/// the default user): that is how they reach the guest when the caller's own `user-data`
/// says nothing about them. cloud-init deduplicates keys, so listing them in the generated
/// `user-data` as well does no harm.
fn render_meta_data(seed: &Seed, ssh_keys: &[&str]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "instance-id: {}", yaml_quote(&seed.instance_id));
    let _ = writeln!(out, "local-hostname: {}", yaml_quote(&seed.hostname));
    if !ssh_keys.is_empty() {
        out.push_str("public-keys:\n");
        for key in ssh_keys {
            let _ = writeln!(out, "  - {}", yaml_quote(key));
        }
    }
    out
}

/// The `user-data` written when the caller gives none.
fn render_user_data(seed: &Seed, ssh_keys: &[&str]) -> String {
    let mut out = String::from("#cloud-config\n");
    let _ = writeln!(out, "hostname: {}", yaml_quote(&seed.hostname));
    if !ssh_keys.is_empty() {
        out.push_str("ssh_authorized_keys:\n");
        for key in ssh_keys {
            let _ = writeln!(out, "  - {}", yaml_quote(key));
        }
    }
    out
}

/// Quotes `s` as a YAML double-quoted scalar made only of printable ASCII.
///
/// A JSON string is almost a YAML scalar, but not quite for cloud-init's PyYAML: JSON leaves
/// DEL and the C1 controls raw, and PyYAML rejects the whole document over them (or, for
/// U+0085, folds it into a space). [`validate`] already refuses control characters; escaping
/// everything outside printable ASCII makes the output safe whatever reaches it.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// Size of the image for `files`: the content plus room for the FATs, the root directory and
/// a partly used cluster per file, rounded up to whole MiB.
fn image_size(files: &[(&str, &[u8])]) -> Result<u64, CidataError> {
    const MIB: u64 = 1 << 20;
    // Clusters are at most 2 KiB below 128 MiB; 32 KiB per file is generous slack. 256 KiB
    // covers two FAT16 tables for a 64 MiB volume plus the reserved and root dir sectors.
    let content: u64 = files.iter().map(|(_, data)| data.len() as u64).sum();
    let needed = content + files.len() as u64 * (32 << 10) + (256 << 10);
    let size = needed.div_ceil(MIB).max(1) * MIB;
    if size > MAX_IMAGE_SIZE {
        return Err(CidataError::TooLarge {
            needed: size,
            max: MAX_IMAGE_SIZE,
        });
    }
    Ok(size.max(MIN_IMAGE_SIZE))
}

/// Formats `file` as a FAT volume of `size` bytes labelled `CIDATA` holding `files` in its
/// root directory.
fn build_image(file: &mut File, size: u64, files: &[(&str, &[u8])]) -> io::Result<()> {
    // Sparse: only the FAT metadata and the files' clusters get written.
    file.set_len(size)?;
    // fatfs does many small sector-sized reads and writes; buffer them.
    let mut stream = fscommon::BufStream::new(file);
    // fatfs picks FAT12 or FAT16 from the size (FAT32 only from 512 MiB), and writes the
    // label both in the boot sector and as a root directory entry, where blkid looks first.
    fatfs::format_volume(
        &mut stream,
        fatfs::FormatVolumeOptions::new().volume_label(LABEL),
    )?;
    {
        let fs = fatfs::FileSystem::new(&mut stream, fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (name, data) in files {
                let mut f = root.create_file(name)?;
                f.write_all(data)?;
                f.flush()?;
            }
        }
        // Explicitly, so an error writing the FAT or FSInfo is reported rather than logged
        // by Drop.
        fs.unmount()?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::names_in;
    use std::io::Read;
    use std::process::Command;

    fn seed() -> Seed {
        Seed {
            instance_id: "vm-1234".into(),
            hostname: "web-1".into(),
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsomekey alice@example\n".into(),
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCother bob".into(),
            ],
            user_data: None,
            network_config: None,
        }
    }

    /// A seed image as read back with fatfs.
    struct Image {
        /// The label in the boot sector.
        label: String,
        /// The label in the root directory.
        dir_label: Option<String>,
        /// The root directory's files and their contents, sorted by name.
        files: Vec<(String, Vec<u8>)>,
    }

    fn read_image(path: &Path) -> Image {
        let file = std::fs::File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert!(
            matches!(fs.fat_type(), fatfs::FatType::Fat12 | fatfs::FatType::Fat16),
            "{:?}",
            fs.fat_type()
        );
        let label = fs.volume_label();
        let dir_label = fs.read_volume_label_from_root_dir().unwrap();
        let mut files = Vec::new();
        for entry in fs.root_dir().iter() {
            let entry = entry.unwrap();
            assert!(entry.is_file(), "{}", entry.file_name());
            let mut data = Vec::new();
            entry.to_file().read_to_end(&mut data).unwrap();
            files.push((entry.file_name(), data));
        }
        files.sort();
        Image {
            label,
            dir_label,
            files,
        }
    }

    #[test]
    fn generated_user_data_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&seed(), &path).unwrap();

        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_IMAGE_SIZE);
        let Image {
            label,
            dir_label,
            files,
        } = read_image(&path);
        assert_eq!(label.trim_end(), "CIDATA");
        assert_eq!(dir_label.as_deref().map(str::trim_end), Some("CIDATA"));
        let meta_data = "instance-id: \"vm-1234\"\n\
                         local-hostname: \"web-1\"\n\
                         public-keys:\n  \
                         - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsomekey alice@example\"\n  \
                         - \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCother bob\"\n";
        let user_data = "#cloud-config\n\
                         hostname: \"web-1\"\n\
                         ssh_authorized_keys:\n  \
                         - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsomekey alice@example\"\n  \
                         - \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCother bob\"\n";
        assert_eq!(
            files,
            vec![
                ("meta-data".to_string(), meta_data.as_bytes().to_vec()),
                ("user-data".to_string(), user_data.as_bytes().to_vec()),
            ]
        );
        // Only the seed itself is left in the directory: the temp file was renamed.
        assert_eq!(names_in(dir.path()), vec!["seed.img"]);
    }

    #[test]
    fn given_user_data_is_verbatim_and_keys_go_to_meta_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let user_data = "#!/bin/sh\necho 'hello: world' > /tmp/x\n";
        let network_config = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";
        let seed = Seed {
            ssh_keys: vec!["ssh-ed25519 AAAAkey1".into()],
            user_data: Some(user_data.into()),
            network_config: Some(network_config.into()),
            ..seed()
        };
        write_seed(&seed, &path).unwrap();

        let Image { label, files, .. } = read_image(&path);
        assert_eq!(label.trim_end(), "CIDATA");
        let meta_data = "instance-id: \"vm-1234\"\nlocal-hostname: \"web-1\"\n\
                         public-keys:\n  - \"ssh-ed25519 AAAAkey1\"\n";
        assert_eq!(
            files,
            vec![
                ("meta-data".to_string(), meta_data.as_bytes().to_vec()),
                (
                    "network-config".to_string(),
                    network_config.as_bytes().to_vec()
                ),
                ("user-data".to_string(), user_data.as_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn no_keys_no_key_sections() {
        let seed = Seed {
            ssh_keys: vec![],
            ..seed()
        };
        assert_eq!(
            render_meta_data(&seed, &[]),
            "instance-id: \"vm-1234\"\nlocal-hostname: \"web-1\"\n"
        );
        assert_eq!(
            render_user_data(&seed, &[]),
            "#cloud-config\nhostname: \"web-1\"\n"
        );
    }

    #[test]
    fn rewriting_replaces_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&seed(), &path).unwrap();
        let seed2 = Seed {
            instance_id: "vm-5678".into(),
            ..seed()
        };
        write_seed(&seed2, &path).unwrap();
        let Image { files, .. } = read_image(&path);
        let meta = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(meta.starts_with("instance-id: \"vm-5678\"\n"), "{meta}");
        assert_eq!(names_in(dir.path()), vec!["seed.img"]);
    }

    #[test]
    fn big_user_data_grows_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        // Not all one byte, so a misplaced cluster would show.
        let user_data: String = (0..5_000_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let seed = Seed {
            user_data: Some(user_data.clone()),
            ..seed()
        };
        write_seed(&seed, &path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > 5_000_000 && size <= 8 << 20, "{size}");
        let Image { files, .. } = read_image(&path);
        assert_eq!(files[1].0, "user-data");
        assert!(files[1].1 == user_data.as_bytes());
    }

    #[test]
    fn too_large_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = Seed {
            user_data: Some("x".repeat(MAX_IMAGE_SIZE as usize)),
            ..seed()
        };
        let err = write_seed(&seed, &path).unwrap_err();
        assert!(matches!(err, CidataError::TooLarge { .. }), "{err}");
        assert!(names_in(dir.path()).is_empty());
    }

    #[test]
    fn failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The parent does not exist: creating the temp file fails.
        let path = dir.path().join("missing").join("seed.img");
        let err = write_seed(&seed(), &path).unwrap_err();
        assert!(matches!(err, CidataError::Io { .. }), "{err}");
        assert!(err.to_string().contains("seed.img"), "{err}");
        // The target is a directory: everything but the final rename works; the temp file
        // must be gone afterwards.
        std::fs::create_dir(dir.path().join("taken")).unwrap();
        std::fs::write(dir.path().join("taken").join("keep"), "x").unwrap();
        let err = write_seed(&seed(), &dir.path().join("taken")).unwrap_err();
        assert!(matches!(err, CidataError::Io { .. }), "{err}");
        assert_eq!(names_in(dir.path()), vec!["taken"]);
    }

    #[test]
    fn hostnames() {
        for good in [
            "a",
            "web-1",
            "vm-1.example.com",
            "A0",
            &"a".repeat(63),
            &[
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(63),
                "e".repeat(61),
            ]
            .join("."),
        ] {
            assert!(validate_hostname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "a.",
            ".a",
            "-a",
            "a-",
            "a.-b",
            "foo_bar",
            "hé",
            "a b",
            "a\nb",
            "a:b",
            &"a".repeat(64),
            &[
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(63),
                "e".repeat(62),
            ]
            .join("."),
        ] {
            let err = validate_hostname(bad).unwrap_err();
            assert!(
                matches!(err, CidataError::InvalidHostname { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let cases = [
            Seed {
                hostname: "bad_host".into(),
                ..seed()
            },
            Seed {
                instance_id: String::new(),
                ..seed()
            },
            Seed {
                instance_id: "../etc".into(),
                ..seed()
            },
            Seed {
                instance_id: "a b".into(),
                ..seed()
            },
            Seed {
                ssh_keys: vec!["ssh-ed25519 AAAA1 a\nssh-ed25519 AAAA2 b".into()],
                ..seed()
            },
            Seed {
                ssh_keys: vec!["ssh-ed25519 AAAA1 a\rb".into()],
                ..seed()
            },
            Seed {
                ssh_keys: vec!["ok AAAA".into(), " \n".into()],
                ..seed()
            },
        ];
        for seed in cases {
            let err = write_seed(&seed, &path).unwrap_err();
            assert!(!matches!(err, CidataError::Io { .. }), "{err}");
        }
        let err = write_seed(
            &Seed {
                ssh_keys: vec!["ok AAAA".into(), "x\ny".into()],
                ..seed()
            },
            &path,
        )
        .unwrap_err();
        assert!(
            matches!(err, CidataError::InvalidSshKey { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("line break"), "{err}");
        assert!(names_in(dir.path()).is_empty());
    }

    #[test]
    fn yaml_quoting() {
        assert_eq!(yaml_quote("plain"), "\"plain\"");
        assert_eq!(yaml_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(yaml_quote("x: [y] # z"), "\"x: [y] # z\"");
        assert_eq!(
            yaml_quote("é\u{7f}\u{85}\u{2028}\n😀"),
            "\"\\u00E9\\u007F\\u0085\\u2028\\u000A\\U0001F600\""
        );
    }

    /// Parses `meta-data` with PyYAML, the parser cloud-init uses.
    #[test]
    fn meta_data_parses_as_yaml_with_pyyaml() {
        // Control characters are refused by validation; U+2028 is not, and PyYAML would read
        // it raw as a line break.
        let key = "ssh-ed25519 AAAA \"quoted\" back\\slash é \u{2028} 😀 #: [x] 'q' &a *b !c";
        let seed = Seed {
            instance_id: "id-\"x\"-é-\\-{a}-😀".into(),
            ssh_keys: vec![key.into()],
            ..seed()
        };
        let ssh_keys = validate(&seed).unwrap();
        let meta_data = render_meta_data(&seed, &ssh_keys);
        let expected = serde_json::json!({
            "instance-id": seed.instance_id,
            "local-hostname": "web-1",
            "public-keys": [key],
        });
        let script = "import sys, yaml, json; \
                      print(json.dumps(yaml.safe_load(sys.stdin.read())))";
        let Some(python3) = zos_testkit::program("python3") else {
            return;
        };
        let mut child = Command::new(&python3)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python3.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(meta_data.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'yaml'") {
            zos_testkit::skip(&format!(
                "PyYAML is not installed for {} (Debian: python3-yaml): run scripts/setup",
                python3.display()
            ));
            return;
        }
        assert!(out.status.success(), "{stderr}");
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(parsed, expected);
    }

    /// Checks the image with dosfstools' `fsck.vfat` and with mtools (after the fatfs
    /// read-back, which needs no tool).
    #[test]
    fn image_passes_external_tools() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = Seed {
            network_config: Some("version: 2\n".into()),
            ..seed()
        };
        write_seed(&seed, &path).unwrap();
        let Image { label, files, .. } = read_image(&path);
        assert_eq!(label.trim_end(), "CIDATA");
        assert_eq!(files.len(), 3);

        let (Some(fsck), Some(mlabel), Some(mtype)) = (
            zos_testkit::program("fsck.vfat"),
            zos_testkit::program("mlabel"),
            zos_testkit::program("mtype"),
        ) else {
            return;
        };
        let out = Command::new(&fsck)
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("starting {}: {e}", fsck.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fsck.vfat: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mtool = |tool: &Path, args: &[&str]| {
            Command::new(tool)
                .args(args)
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap_or_else(|e| panic!("starting {}: {e}", tool.display()))
        };
        let img = path.to_str().unwrap();
        let out = mtool(&mlabel, &["-i", img, "-s", "::"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("CIDATA"), "{stdout}");
        for (name, data) in &files {
            let out = mtool(&mtype, &["-i", img, &format!("::{name}")]);
            assert!(out.status.success(), "mtype {name}");
            assert_eq!(&out.stdout, data, "{name}");
        }
    }
}
