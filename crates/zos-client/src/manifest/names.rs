//! Workload names from Kubernetes names: the namespace as a prefix (`<ns>-<name>`, none for
//! `default`), `-` and `.` written `_` (a workload name is letters, digits and `_`, at most
//! 36). The node's resolver answers a machine by its name with `_` written `-` again
//! (`hostname_for`), so `web-0` resolves as `web-0` on the application's network.

use zos_types::WorkloadName;

/// The workload name of Kubernetes name `name` in namespace `ns`, with `suffix` (a replica's
/// index) appended as `-<suffix>`.
pub fn workload_name(
    ns: Option<&str>,
    name: &str,
    suffix: Option<&str>,
) -> Result<WorkloadName, String> {
    let mut full = String::new();
    if let Some(ns) = ns {
        full.push_str(ns);
        full.push('-');
    }
    full.push_str(name);
    if let Some(suffix) = suffix {
        full.push('-');
        full.push_str(suffix);
    }
    let mapped: String = full
        .chars()
        .map(|c| if c == '-' || c == '.' { '_' } else { c })
        .collect();
    WorkloadName::try_from(mapped).map_err(|_| {
        format!(
            "{full:?} cannot be a workload name: at most 36 letters, digits, '-' or '.' \
             (namespace prefix and replica index included)"
        )
    })
}

/// The name a Service in namespace `ns` resolves as on the network: `<ns>-<name>`, one DNS
/// label.
pub fn alias(ns: Option<&str>, name: &str) -> Result<String, String> {
    let full = match ns {
        Some(ns) => format!("{ns}-{name}"),
        None => name.to_string(),
    };
    let label = full.len() <= 63
        && full
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !full.starts_with('-')
        && !full.ends_with('-');
    if label {
        Ok(full)
    } else {
        Err(format!(
            "{full:?} cannot be a name on the network: one DNS label of at most 63 lowercase \
             letters, digits and '-' (namespace prefix included)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_prefix_and_dashes_become_underscores() {
        assert_eq!(
            workload_name(None, "web", Some("0")).unwrap().as_str(),
            "web_0"
        );
        assert_eq!(
            workload_name(Some("shop"), "redis.leader", None)
                .unwrap()
                .as_str(),
            "shop_redis_leader"
        );
        let err = workload_name(Some("a-very-long-namespace"), "and-a-long-name", Some("10"));
        assert!(err.unwrap_err().contains("at most 36"));
    }
}
