//! Rules a deployment must follow that serde cannot express.

use crate::deployment::Deployment;
use std::collections::BTreeSet;
use std::fmt;

/// Everything wrong with a deployment, one problem per entry, each naming its place
/// (e.g. `workloads[2] (name "web"): cpu must be at least 1`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError(pub Vec<String>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Deployment names: 1 to 64 ASCII letters, digits, `_` or `-`. Wider than workload names
/// because they only label things and never become host resource names on their own.
pub fn is_valid_deployment_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Deployment {
    /// Checks names, versions and each workload type's own rules (references between
    /// workloads, resource limits), listing every problem rather than the first.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        if !is_valid_deployment_name(&self.name) {
            problems.push(format!(
                "name {:?}: use 1 to 64 letters, digits, '_' or '-'",
                self.name
            ));
        }
        if self.workloads.is_empty() {
            problems.push("workloads: a deployment needs at least one workload".to_string());
        }
        let mut names = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let mut bad = |msg: String| {
                problems.push(format!(
                    "workloads[{i}] (name {:?}): {msg}",
                    w.name.as_str()
                ))
            };
            if !names.insert(&w.name) {
                bad("name is used by an earlier workload".into());
            }
            if w.version > self.version {
                bad(format!(
                    "version {} is above the deployment's version {}",
                    w.version, self.version
                ));
            }
            for problem in w.spec.problems(&self.workloads) {
                bad(problem);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    const EXAMPLE: &str = r#"
name: hello
description: a web app and its data
workloads:
  - name: data
    type: zmount
    data:
      size: 1G
  - name: web
    type: zmachine
    data:
      flist: /var/lib/zos/flists/busybox.fl
      cmd: ["sh", "-c", "echo hello"]
      env: { GREETING: hi }
      cpu: 1
      memory: 256M
      mounts:
        - name: data
          mountpoint: /data
"#;

    fn owner() -> PublicKey {
        Keypair::from_seed(&[1; 32]).public()
    }

    fn example() -> Deployment {
        DeploymentFile::from_yaml_str(EXAMPLE)
            .unwrap()
            .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public())
    }

    fn parse_err(yaml: &str) -> String {
        DeploymentFile::from_yaml_str(yaml).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_example_file() {
        let d = example();
        d.validate().unwrap();
        assert_eq!((d.name.as_str(), d.version, d.owner), ("hello", 0, owner()));
        assert_eq!(
            d.signature_requirement,
            SignatureRequirement::owner_only(&owner())
        );
        assert_eq!(
            d.workloads[0].spec,
            WorkloadSpec::Zmount(ZMount {
                size: ByteSize(1 << 30)
            })
        );
        let WorkloadSpec::Zmachine(m) = &d.workloads[1].spec else {
            panic!("not a zmachine")
        };
        assert_eq!(m.cmd, ["sh", "-c", "echo hello"]);
        assert_eq!(m.env["GREETING"], "hi");
        assert_eq!(
            (m.cpu, m.memory, m.root_size),
            (1, ByteSize(256 << 20), ByteSize(1 << 30))
        );
        assert!(m.entrypoint.is_empty());
        assert_eq!(m.mounts[0].mountpoint, "/data");
    }

    #[test]
    fn sizes_accept_integers_and_bad_sizes_name_the_path() {
        let d = DeploymentFile::from_yaml_str(&EXAMPLE.replace("size: 1G", "size: 4096")).unwrap();
        assert_eq!(
            d.workloads[0].spec,
            WorkloadSpec::Zmount(ZMount {
                size: ByteSize(4096)
            })
        );
        let err = parse_err(&EXAMPLE.replace("memory: 256M", "memory: 12X"));
        assert!(
            err.starts_with("workloads[1].data.memory: \"12X\": "),
            "{err}"
        );
        assert!(err.contains("use a size like 512M or 2G"), "{err}");
    }

    #[test]
    fn unknown_type_names_the_workload_and_the_choices() {
        let err = parse_err(&EXAMPLE.replace("type: zmachine", "type: foo"));
        assert!(
            err.starts_with(
                "workloads[1].type: unknown variant `foo`, expected one of `zmachine`, `zmount`, `network`"
            ),
            "{err}"
        );
    }

    #[test]
    fn typos_and_bad_names_are_errors() {
        let err = parse_err(&EXAMPLE.replace("name: web", "name: web-1"));
        assert!(
            err.starts_with("workloads[1].name: invalid workload name \"web-1\""),
            "{err}"
        );
        let err = parse_err(&EXAMPLE.replace("cpu: 1", "cpus: 1"));
        assert!(
            err.starts_with("workloads[1].data.cpus: unknown field `cpus`"),
            "{err}"
        );
        let err = parse_err(&EXAMPLE.replace("    type: zmount", "    kind: zmount"));
        assert!(
            err.starts_with("workloads[0]: unknown field `kind`, expected one of `name`"),
            "{err}"
        );
    }

    const NETWORKED: &str = r#"
name: lan
workloads:
  - name: net
    type: network
    data:
      ip_range: 10.20.0.0/16
      subnet: 10.20.1.0/24
  - name: web
    type: zmachine
    data:
      flist: /var/lib/zos/flists/busybox.fl
      network:
        interfaces:
          - network: net
            ip: 10.20.1.5
"#;

    #[test]
    fn a_network_and_a_machine_on_it_parse_and_validate() {
        let d = DeploymentFile::from_yaml_str(NETWORKED)
            .unwrap()
            .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public());
        d.validate().unwrap();
        let WorkloadSpec::Network(n) = &d.workloads[0].spec else {
            panic!("not a network: {:?}", d.workloads[0].spec);
        };
        assert!(n.egress);
        let bad = DeploymentFile::from_yaml_str(&NETWORKED.replace("10.20.1.5", "10.20.9.5"))
            .unwrap()
            .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public());
        let p = bad.validate().map_err(|e| e.0).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(r#"workloads[1] (name "web"): network.interfaces[0]: ip 10.20.9.5"#),
            "{p:?}"
        );
        let err =
            parse_err(&NETWORKED.replace("subnet:", "wireguard: { peer: [] }\n      subnet:"));
        assert!(
            err.starts_with("workloads[0].data.wireguard.peer: unknown field `peer`"),
            "{err}"
        );
        let err = parse_err(&NETWORKED.replace("10.20.0.0/16", "10.20.0.0"));
        assert!(err.starts_with("workloads[0].data.ip_range"), "{err}");
    }

    #[test]
    fn a_downloaded_flist_may_be_pinned_and_only_a_downloaded_one() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let with = |flist: &str, hash: &str| {
            EXAMPLE.replace(
                "flist: /var/lib/zos/flists/busybox.fl",
                &format!("flist: {flist}\n      flist_hash: {hash}"),
            )
        };
        let check = |yaml: String| {
            DeploymentFile::from_yaml_str(&yaml)
                .unwrap()
                .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public())
                .validate()
                .map_err(|e| e.0)
        };
        check(with("https://flists.example/app.fl", &pin)).unwrap();
        let p = check(with("https://flists.example/app.fl", "sha256:abc")).unwrap_err();
        assert!(
            p[0].contains("flist_hash \"sha256:abc\": give it as sha256:"),
            "{p:?}"
        );
        let p = check(with("/var/lib/zos/flists/busybox.fl", &pin)).unwrap_err();
        assert!(
            p[0].contains("use it with an http:// or https:// flist"),
            "{p:?}"
        );
    }

    #[test]
    fn files_are_absolute_plain_paths_with_octal_modes() {
        let with = |files: &str| {
            let yaml = EXAMPLE.replace(
                "      cpu: 1\n",
                &format!("      cpu: 1\n      files: {files}\n"),
            );
            DeploymentFile::from_yaml_str(&yaml)
                .unwrap()
                .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public())
                .validate()
                .map_err(|e| e.0.join("\n"))
        };
        with(r#"[{ path: /etc/app.conf, content: "a=1", mode: "0600" }]"#).unwrap();
        let err =
            with(r#"[{ path: etc/x, content: "" }, { path: /a/../b, content: "" }]"#).unwrap_err();
        assert!(
            err.contains("files[0]: path \"etc/x\": give an absolute path"),
            "{err}"
        );
        assert!(err.contains("files[1]: path \"/a/../b\""), "{err}");
        let err = with(r#"[{ path: /a, content: "", mode: "rw" }, { path: /a, content: "" }]"#)
            .unwrap_err();
        assert!(
            err.contains("files[0]: mode \"rw\": give permission bits in octal"),
            "{err}"
        );
        assert!(
            err.contains("files[1]: path \"/a\" is given twice"),
            "{err}"
        );
    }

    #[test]
    fn a_machine_has_an_flist_or_an_image_never_both() {
        let with = |root: &str| {
            let yaml = EXAMPLE.replace("flist: /var/lib/zos/flists/busybox.fl", root);
            DeploymentFile::from_yaml_str(&yaml)
                .unwrap()
                .into_deployment(owner(), Keypair::from_seed(&[3; 32]).public())
                .validate()
                .map_err(|e| e.0)
        };
        with("image: docker://registry.example:5000/library/nginx:1").unwrap();
        let one = |root: &str| with(root).unwrap_err().join("\n");
        assert!(one("image: nginx:1").contains("give a registry reference"));
        assert!(one("root_size: 1G").contains("give the machine a root"));
        assert!(
            one("flist: /var/lib/zos/flists/busybox.fl\n      image: docker://r.example/a:1")
                .contains("flist and image are both given")
        );
    }

    #[test]
    fn validation_names_each_problem() {
        let problems = |edit: fn(&mut Deployment)| {
            let mut d = example();
            edit(&mut d);
            d.validate().map_err(|e| e.0).unwrap_err()
        };
        assert_eq!(
            problems(|d| d.name = "a b".into()),
            [r#"name "a b": use 1 to 64 letters, digits, '_' or '-'"#]
        );
        assert_eq!(
            problems(|d| d.workloads.clear()),
            ["workloads: a deployment needs at least one workload"]
        );
        assert_eq!(
            problems(|d| d.workloads[1].name = d.workloads[0].name.clone()),
            [r#"workloads[1] (name "data"): name is used by an earlier workload"#]
        );
        assert_eq!(
            problems(|d| d.workloads[1].version = 1),
            [r#"workloads[1] (name "web"): version 1 is above the deployment's version 0"#]
        );
        assert_eq!(
            problems(|d| d.workloads[0].spec = WorkloadSpec::Zmount(ZMount { size: ByteSize(0) })),
            [r#"workloads[0] (name "data"): size must be greater than 0"#]
        );
        let p = problems(|d| {
            let WorkloadSpec::Zmachine(m) = &mut d.workloads[1].spec else {
                return;
            };
            m.cpu = 0;
            m.memory = ByteSize(32 << 20);
            m.env.insert("A=B".into(), "x".into());
            m.mounts.push(Mount {
                name: m.mounts[0].name.clone(),
                mountpoint: "data".into(),
            });
            m.mounts.push(Mount {
                name: "nope".to_string().try_into().unwrap(),
                mountpoint: "/data".into(),
            });
        });
        let web = r#"workloads[1] (name "web"): "#;
        let expected = [
            "cpu must be at least 1",
            "memory 32 MiB is below the minimum 64 MiB",
            r#"env name "A=B" must be non-empty and contain no '='"#,
            r#"zmount "data" is mounted twice"#,
            r#"mountpoint "data" must be an absolute path below /"#,
            r#"mount "nope" is not a zmount in this deployment"#,
            r#"mountpoint "/data" is used twice"#,
        ];
        assert_eq!(p, expected.map(|e| format!("{web}{e}")));
    }
}
