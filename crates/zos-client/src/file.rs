//! Deployment files: what a user writes (YAML, or JSON by extension) and what
//! `--sign-only` writes for co-signers (JSON with an owner and signatures).

use crate::DeployError;
use std::io::Write;
use std::path::Path;
use zos_types::{Deployment, DeploymentFile};

/// What a deployment file holds.
#[derive(Debug)]
pub enum DeploymentInput {
    /// A user's file: no owner, node or signatures yet.
    File(DeploymentFile),
    /// A deployment already signed by its owner, maybe by co-signers too.
    Signed(Deployment),
}

impl DeploymentInput {
    /// Reads and parses `path`: a signed deployment when it is one, else a user's file.
    pub fn read(path: &Path) -> Result<Self, DeployError> {
        Self::parse(path, &read(path)?)
    }

    /// Parses `text`, read from `path` (whose extension picks JSON or YAML).
    pub fn parse(path: &Path, text: &str) -> Result<Self, DeployError> {
        match parse_signed(path, text)? {
            Some(signed) => Ok(DeploymentInput::Signed(signed)),
            None => parse_file(path, text).map(DeploymentInput::File),
        }
    }
}

/// Reads `path` as a signed deployment; `None` when it is not one (a user's file, which is
/// then not parsed).
pub fn read_signed(path: &Path) -> Result<Option<Deployment>, DeployError> {
    parse_signed(path, &read(path)?)
}

fn read(path: &Path) -> Result<String, DeployError> {
    std::fs::read_to_string(path).map_err(|source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a user's deployment file; errors name the file and the field path.
pub fn parse_file(path: &Path, text: &str) -> Result<DeploymentFile, DeployError> {
    let parsed = if is_json(path) {
        DeploymentFile::from_json_str(text)
    } else {
        DeploymentFile::from_yaml_str(text)
    };
    parsed.map_err(|error| DeployError::Parse {
        path: path.to_path_buf(),
        error,
    })
}

/// A deployment already signed (JSON with an owner), if `text` is one; users' own files
/// have no owner.
pub fn parse_signed(path: &Path, text: &str) -> Result<Option<Deployment>, DeployError> {
    let has_owner = is_json(path)
        && serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("owner").is_some());
    if !has_owner {
        return Ok(None);
    }
    Deployment::from_json_str(text)
        .map(Some)
        .map_err(|error| DeployError::ParseSigned {
            path: path.to_path_buf(),
            error,
        })
}

/// Whether the file sets versions, which are ignored: they are worked out from what the
/// node holds.
pub fn sets_versions(file: &DeploymentFile) -> bool {
    file.version.is_some() || file.workloads.iter().any(|w| w.version.is_some())
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Writes a signed deployment as pretty JSON, whole or not at all: a temporary file beside
/// it is renamed over it, so co-signers never see half a file.
pub fn write_signed(path: &Path, d: &Deployment) -> Result<(), DeployError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|source| DeployError::TempFile {
        path: path.to_path_buf(),
        source,
    })?;
    let write_error = |source| DeployError::Write {
        path: path.to_path_buf(),
        source,
    };
    serde_json::to_writer_pretty(&mut tmp, d).map_err(|e| write_error(e.into()))?;
    tmp.write_all(b"\n").map_err(write_error)?;
    tmp.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{deployment, YAML};

    #[test]
    fn signed_files_are_told_from_users_files() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("app.yaml");
        std::fs::write(&yaml, YAML).unwrap();
        assert!(matches!(
            DeploymentInput::read(&yaml).unwrap(),
            DeploymentInput::File(_)
        ));
        assert!(read_signed(&yaml).unwrap().is_none());

        let signed = dir.path().join("app.json");
        let d = deployment(YAML);
        write_signed(&signed, &d).unwrap();
        match DeploymentInput::read(&signed).unwrap() {
            DeploymentInput::Signed(read) => assert_eq!(read, d),
            other => panic!("{other:?}"),
        }

        std::fs::write(&signed, r#"{"owner": "nope"}"#).unwrap();
        let err = read_signed(&signed).unwrap_err().to_string();
        assert!(err.contains("a signed deployment, but"), "{err}");
        let err = DeploymentInput::read(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("reading "), "{err}");
    }
}
