//! Image references, Docker's rule made explicit: a first path part with a `.` or `:`, or
//! `localhost`, is a registry host, else the image is on `docker.io`, and a one-part name
//! there is under `library/`; no tag and no digest is `:latest`. So `nginx:1.25` is
//! `docker://docker.io/library/nginx:1.25` and `host:5000/name:tag` is
//! `docker://host:5000/name:tag`.
//!
//! `imagePullPolicy`: the node imports a reference once and reuses it. `IfNotPresent` is
//! exactly that. `Always` (Kubernetes' default for `:latest` and untagged images) is honoured
//! only for a digest reference, where a pull would give the same image; for a tag it is not
//! honoured (the node would not see a newer image under the same tag). `Never` is not
//! honoured (the node pulls an image it lacks).

/// The full `docker://` reference of Kubernetes image `image`.
pub fn reference(image: &str) -> Result<String, String> {
    let valid = !image.is_empty()
        && !image.contains("://")
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if !valid {
        return Err(format!(
            "{image:?} is not an image reference (like nginx:1.25 or registry.example:5000/team/app:1)"
        ));
    }
    let (host, path) = match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        Some(_) => ("docker.io", image.to_string()),
        None => ("docker.io", format!("library/{image}")),
    };
    let last = path.rsplit('/').next().unwrap_or_default();
    let path = match path.contains('@') || last.contains(':') {
        true => path,
        false => format!("{path}:latest"),
    };
    Ok(format!("docker://{host}/{path}"))
}

/// What `imagePullPolicy` `policy` (or the default for `image`) asks that the node does
/// not do, if anything.
pub fn pull_policy_problem(image: &str, policy: Option<&str>) -> Option<String> {
    let digest = image.contains('@');
    let tag_latest = {
        let last = image.rsplit('/').next().unwrap_or_default();
        !digest && !matches!(last.split_once(':'), Some((_, tag)) if tag != "latest")
    };
    let effective = policy.unwrap_or(if tag_latest { "Always" } else { "IfNotPresent" });
    match effective {
        "IfNotPresent" => None,
        "Always" if digest => None,
        "Always" => Some(format!(
            "pull policy Always{}: the node imports a tag once and reuses it; pin a tag other \
             than latest, a digest, or set IfNotPresent",
            if policy.is_none() {
                " (the default for :latest and untagged images)"
            } else {
                ""
            }
        )),
        "Never" => Some("pull policy Never: the node pulls an image it lacks".into()),
        other => Some(format!(
            "pull policy {other:?} is not Always, IfNotPresent or Never"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_become_full_references() {
        let cases = [
            ("nginx", "docker://docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker://docker.io/library/nginx:1.25"),
            ("bitnami/redis:7", "docker://docker.io/bitnami/redis:7"),
            ("localhost/app", "docker://localhost/app:latest"),
            ("host:5000/name:tag", "docker://host:5000/name:tag"),
            (
                "registry.k8s.io/nginx-slim:0.8",
                "docker://registry.k8s.io/nginx-slim:0.8",
            ),
            (
                "127.0.0.1:5000/a/b@sha256:abc",
                "docker://127.0.0.1:5000/a/b@sha256:abc",
            ),
        ];
        for (short, full) in cases {
            assert_eq!(reference(short).unwrap(), full, "{short}");
        }
        assert!(reference("docker://x/y").is_err());
        assert!(reference("").is_err());
        assert!(reference("a b").is_err());
    }

    #[test]
    fn pull_policies_say_what_the_node_cannot_do() {
        assert_eq!(pull_policy_problem("nginx:1.25", None), None);
        assert_eq!(
            pull_policy_problem("nginx:1.25", Some("IfNotPresent")),
            None
        );
        assert_eq!(
            pull_policy_problem("r:5000/a@sha256:00", Some("Always")),
            None
        );
        assert!(pull_policy_problem("nginx", None)
            .unwrap()
            .contains("default for :latest"));
        assert!(pull_policy_problem("host:5000/app", None).is_some());
        assert!(pull_policy_problem("nginx:1.25", Some("Always")).is_some());
        assert!(pull_policy_problem("nginx:1.25", Some("Never")).is_some());
    }
}
