//! Resolving the process's `user` against the container's `/etc/passwd` and `/etc/group`, with
//! the rules runc (and so Docker) uses.

/// Who the process runs as.
#[derive(Debug, PartialEq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (may be empty).
    pub groups: Vec<u32>,
    /// Home directory, used when the environment has no `HOME`.
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Lines split on `:`, skipping blank lines and comments.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn passwd(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    records(text).filter_map(|f| {
        Some(Passwd {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn groups(text: &str) -> impl Iterator<Item = Group<'_>> {
    records(text).filter_map(|f| {
        Some(Group {
            name: f.first()?,
            gid: f.get(2)?.parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`) given the contents of
/// `/etc/passwd` and `/etc/group` (empty when the files are missing).
pub fn resolve(spec: &str, passwd_text: &str, group_text: &str) -> Result<ExecUser, String> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    // An empty user means root, still looked up for its home and groups.
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let uid_num: Option<u32> = user_arg.parse().ok();
    let entry = passwd(passwd_text).find(|p| p.name == user_arg || Some(p.uid) == uid_num);
    let mut user = match (&entry, uid_num) {
        (Some(p), _) => ExecUser {
            uid: p.uid,
            gid: p.gid,
            groups: Vec::new(),
            home: if p.home.is_empty() { "/" } else { p.home }.to_string(),
        },
        (None, Some(uid)) => ExecUser {
            uid,
            gid: 0,
            groups: Vec::new(),
            home: "/".to_string(),
        },
        (None, None) => {
            return Err(format!(
                "unable to find user {user_arg}: no matching entries in passwd file"
            ))
        }
    };
    match group_arg {
        Some(group_arg) => {
            let gid_num: Option<u32> = group_arg.parse().ok();
            let found = groups(group_text).find(|g| g.name == group_arg || Some(g.gid) == gid_num);
            user.gid = match (found, gid_num) {
                (Some(g), _) => g.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(format!(
                        "unable to find group {group_arg}: no matching entries in group file"
                    ))
                }
            };
        }
        // Supplementary groups only come with the implicit form, as in runc.
        None => {
            if let Some(p) = &entry {
                user.groups = groups(group_text)
                    .filter(|g| g.members.contains(&p.name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # comment\n\
                          alice:x:1000:1000::/home/alice:/bin/sh\n\
                          bob:x:1001:100::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:root\nwheel:x:10:root,alice\nalice:x:1000:\nstaff:x:50:alice\n";

    fn user(spec: &str) -> Result<ExecUser, String> {
        resolve(spec, PASSWD, GROUP)
    }

    #[test]
    fn empty_is_root_with_groups() {
        let u = user("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.groups, vec![0, 10]);
    }

    #[test]
    fn by_name_and_uid() {
        let u = user("alice").unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (1000, 1000, vec![10, 50]));
        assert_eq!(user("1000").unwrap(), u);
        assert_eq!(user("bob").unwrap().gid, 100);
    }

    #[test]
    fn numeric_without_entry() {
        let u = user("4242").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.len(), u.home.as_str()),
            (4242, 0, 0, "/")
        );
        let u = user("4242:77").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 77));
    }

    #[test]
    fn explicit_group() {
        let u = user("alice:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.groups.is_empty());
        assert_eq!(user("alice:10").unwrap().gid, 10);
    }

    #[test]
    fn unknown_names_fail() {
        assert!(user("mallory")
            .unwrap_err()
            .contains("unable to find user mallory"));
        assert!(user("alice:nogroup")
            .unwrap_err()
            .contains("unable to find group"));
        assert!(resolve("alice", "", "").is_err());
        assert_eq!(resolve("", "", "").unwrap().uid, 0);
    }
}
