//! The store policy: which stores an flist's routes may make this host reach.
//!
//! An flist names its stores itself, so whoever wrote the flist chooses where the host that
//! mounts it sends requests. A node mounting strangers' flists must not be made to talk to
//! itself (loopback, its own interface addresses), to link-local services (a cloud's
//! metadata service at 169.254.169.254), or to read its own directories. Under a policy:
//!
//! - a network store may reach any address except loopback, link-local, unspecified,
//!   multicast, broadcast and the host's own interface addresses (listed at each check, so
//!   an address added later counts too), unless an allowed network (CIDR) contains it;
//! - a host name is allowed only if every address it resolves to is; stores resolve once per
//!   connection and connect only to the addresses checked, so a name that resolves
//!   elsewhere on the second lookup (DNS rebinding) cannot slip past;
//! - a local path (a `dir://` store, a Redis unix socket) is refused unless it lies under an
//!   allowed directory: a host's directories are the same kind of secret as its loopback.
//!
//! Without a policy (the default for a user's own `zos flist mount`, `zos run`), stores are
//! reached as the flist says.

use super::StoreError;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

/// The restrictions a host puts on the stores flists make it reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorePolicy {
    allow_nets: Vec<IpNet>,
    allow_dirs: Vec<PathBuf>,
}

/// What would let a refused store through: the form the hint in an error takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// Allowing this network (the refused address alone, as a /32 or /128).
    Net(IpNet),
    /// Allowing this directory (the refused path itself).
    Dir(PathBuf),
}

impl std::fmt::Display for Allowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowance::Net(net) => write!(f, "{net}"),
            Allowance::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl StorePolicy {
    /// A policy denying the local address classes and every local path, except the networks
    /// in `allow_nets` and the paths under `allow_dirs` (absolute, no `..`).
    pub fn new(allow_nets: Vec<IpNet>, allow_dirs: Vec<PathBuf>) -> Result<StorePolicy, String> {
        if let Some(dir) = allow_dirs.iter().find(|d| !is_plain_absolute(d)) {
            return Err(format!(
                "allowed store directory {:?} must be an absolute path without `..`, like \
                 /var/lib/zos/store",
                dir
            ));
        }
        Ok(StorePolicy {
            allow_nets,
            allow_dirs,
        })
    }

    /// Parses a network to allow: a CIDR (`10.1.0.0/16`, `fd00::/8`) or one address.
    pub fn parse_net(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{s:?} is not a network: use a CIDR like 10.1.0.0/16 or one address like 127.0.0.1"))
    }

    /// The networks exempt from the denied address classes.
    pub fn allow_nets(&self) -> &[IpNet] {
        &self.allow_nets
    }

    /// The directories local stores may be under.
    pub fn allow_dirs(&self) -> &[PathBuf] {
        &self.allow_dirs
    }

    /// Whether the store at `url` may be reached, judged before any connection: a local path
    /// against the allowed dirs, an address against the policy, a name by every address it
    /// resolves to now. A name that does not resolve now is let through: the store resolves
    /// again, and checks, when it connects. Returns the path a local store must use (symlinks
    /// resolved, so what was checked is what is opened), if it is one.
    pub fn check_url(&self, store: &str, url: &url::Url) -> Result<Option<PathBuf>, StoreError> {
        // redis:// and zdb:// are not special schemes: their IPv4 hosts stay text.
        let (ip, name) = match url.host() {
            Some(url::Host::Ipv4(ip)) => (Some(IpAddr::from(ip)), None),
            Some(url::Host::Ipv6(ip)) => (Some(IpAddr::from(ip)), None),
            Some(url::Host::Domain(name)) if !name.is_empty() => (name.parse().ok(), Some(name)),
            // No host: a dir store or a Redis unix socket, both paths on this host.
            _ => return self.check_dir(store, Path::new(url.path())).map(Some),
        };
        match (ip, name) {
            (Some(ip), _) => self.check_ip(store, ip)?,
            (None, Some(name)) => {
                let port = url.port_or_known_default().unwrap_or(0);
                // Not resolvable now: the store resolves and checks again when it connects.
                if let Ok(addrs) = (name, port).to_socket_addrs() {
                    for addr in addrs {
                        self.check_ip(store, addr.ip())?;
                    }
                }
            }
            (None, None) => {}
        }
        Ok(None)
    }

    /// [`StorePolicy::check_url`] of a store as an flist's route or `--store` names it
    /// (`[hh-hh=]URL`).
    pub fn check_store(&self, spec: &str) -> Result<(), StoreError> {
        let url = super::StoreSpec::parse(spec)?.url;
        let display = super::strip_password(&url);
        let parsed = url::Url::parse(&url).map_err(|e| StoreError::BadUrl {
            url: display.clone(),
            reason: e.to_string(),
        })?;
        self.check_url(&display, &parsed).map(|_| ())
    }

    /// Resolves `host:port` once and checks every address; the addresses to connect to (only
    /// these, so what was checked is what is reached).
    pub fn resolve(
        &self,
        store: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, StoreError> {
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| StoreError::Unavailable {
                store: store.to_owned(),
                reason: format!("resolving {host}: {e}"),
            })?
            .collect();
        for addr in &addrs {
            self.check_ip(store, addr.ip())?;
        }
        Ok(addrs)
    }

    /// Whether `ip` may be reached: allowed networks first, then the denied classes.
    pub fn check_ip(&self, store: &str, ip: IpAddr) -> Result<(), StoreError> {
        let ip = ip.to_canonical();
        if self.allow_nets.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match denied_class(ip, &host_addresses()) {
            None => Ok(()),
            Some(class) => Err(StoreError::Refused {
                store: store.to_owned(),
                reason: format!("{ip} is {class}"),
                allow: Allowance::Net(IpNet::from(ip)),
            }),
        }
    }

    /// Whether a local store at `path` may be used: under an allowed dir both as written and
    /// with symlinks resolved (where it exists). Returns the path to open.
    pub fn check_dir(&self, store: &str, path: &Path) -> Result<PathBuf, StoreError> {
        let refused = |reason: String| StoreError::Refused {
            store: store.to_owned(),
            reason,
            allow: Allowance::Dir(path.to_owned()),
        };
        let allowed = |p: &Path| {
            self.allow_dirs.iter().any(|dir| {
                p.starts_with(dir)
                    || std::fs::canonicalize(dir).is_ok_and(|real| p.starts_with(real))
            })
        };
        if !is_plain_absolute(path) || !allowed(path) {
            return Err(refused(format!(
                "{} is a path on this host outside the allowed store directories",
                path.display()
            )));
        }
        match std::fs::canonicalize(path) {
            Ok(real) if allowed(&real) => Ok(real),
            Ok(real) => Err(refused(format!(
                "{} leads to {}, outside the allowed store directories",
                path.display(),
                real.display()
            ))),
            // Not there (yet): nothing to follow; reading it finds no blocks.
            Err(_) => Ok(path.to_owned()),
        }
    }
}

fn is_plain_absolute(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| c != Component::ParentDir)
}

/// Why `ip` (canonical: IPv4-mapped IPv6 already turned into IPv4) is denied, if it is.
fn denied_class(ip: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
    let class = match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8 "this network": Linux connects 0.0.0.0 to the host itself.
                Some("an unspecified address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    };
    class.or_else(|| {
        own.contains(&ip)
            .then_some("one of this host's own addresses")
    })
}

/// This host's interface addresses now (empty if they cannot be listed: the address classes
/// still hold).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list this host's addresses; the store policy checks classes only");
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .map(|ip| ip.to_canonical())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn refused(r: Result<impl std::fmt::Debug, StoreError>) -> String {
        match r {
            Err(e @ StoreError::Refused { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn local_classes_are_denied_and_the_rest_allowed() {
        let own = [ip("192.0.2.7"), ip("2001:db8::7")];
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("192.0.2.7", "own addresses"),
            ("2001:db8::7", "own addresses"),
            ("::ffff:192.0.2.7", "own addresses"),
        ] {
            let canonical = ip(addr).to_canonical();
            let got = denied_class(canonical, &own);
            assert!(
                got.is_some_and(|c| c.contains(class)),
                "{addr}: {got:?}, expected {class}"
            );
        }
        for addr in [
            "1.1.1.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "192.0.2.8",
            "fec0::1",
            "fd00::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(denied_class(ip(addr).to_canonical(), &own), None, "{addr}");
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_listed_and_denied() {
        let own = host_addresses();
        // Every Linux host has at least its loopback interface.
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
        let policy = StorePolicy::default();
        for addr in own.iter().filter(|a| !a.is_loopback()) {
            let e = refused(policy.check_ip("s", *addr));
            assert!(
                e.contains("own addresses") || e.contains("link-local"),
                "{e}"
            );
        }
    }

    #[test]
    fn allowed_networks_exempt_denied_addresses() {
        let policy = StorePolicy::new(
            vec![
                StorePolicy::parse_net("127.0.0.0/8").unwrap(),
                StorePolicy::parse_net("fe80::1").unwrap(),
            ],
            vec![],
        )
        .unwrap();
        policy.check_ip("s", ip("127.0.0.1")).unwrap();
        policy.check_ip("s", ip("127.200.0.1")).unwrap();
        policy.check_ip("s", ip("::ffff:127.0.0.1")).unwrap();
        policy.check_ip("s", ip("fe80::1")).unwrap();
        let e = refused(policy.check_ip("redis://[fe80::2]:6379", ip("fe80::2")));
        assert_eq!(
            e,
            "store redis://[fe80::2]:6379 refused by the store policy: fe80::2 is a link-local address"
        );
        let e = refused(policy.check_ip("s", ip("169.254.169.254")));
        assert!(e.contains("169.254.169.254 is a link-local address"), "{e}");
        match policy.check_ip("s", ip("::1")) {
            Err(StoreError::Refused { allow, .. }) => assert_eq!(allow.to_string(), "::1/128"),
            other => panic!("{other:?}"),
        }
        assert!(StorePolicy::parse_net("10.0.0.0/33").is_err());
        assert!(StorePolicy::parse_net("localhost").is_err());
        assert_eq!(
            StorePolicy::parse_net("10.0.0.1").unwrap().to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn names_are_judged_by_every_address_they_resolve_to() {
        let policy = StorePolicy::default();
        // localhost resolves (from /etc/hosts) to loopback only.
        let url = url::Url::parse("redis://localhost:6379").unwrap();
        let e = refused(policy.check_url("redis://localhost:6379", &url));
        assert!(e.contains("loopback"), "{e}");
        let e = refused(policy.resolve("http://localhost", "localhost", 80));
        assert!(e.contains("loopback"), "{e}");
        let url = url::Url::parse("http://127.0.0.1:8080/store").unwrap();
        refused(policy.check_url("http://127.0.0.1:8080/store", &url));
        let url = url::Url::parse("zdb://[::1]/ns").unwrap();
        refused(policy.check_url("zdb://[::1]/ns", &url));
        // Allowed, the same name passes and resolves to the checked addresses only.
        let open = StorePolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            vec![],
        )
        .unwrap();
        let addrs = open.resolve("http://localhost", "localhost", 80).unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
        // An address that is not local passes without any lookup.
        let url = url::Url::parse("https://93.184.215.14/store").unwrap();
        assert_eq!(policy.check_url("s", &url).unwrap(), None);
    }

    #[test]
    fn local_paths_need_an_allowed_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("stores");
        let secret = tmp.path().join("secret");
        std::fs::create_dir_all(allowed.join("a")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::os::unix::fs::symlink(&secret, allowed.join("link")).unwrap();
        let policy = StorePolicy::new(vec![], vec![allowed.clone()]).unwrap();
        let dir = |p: &Path| url::Url::parse(&format!("dir://{}", p.display())).unwrap();

        let real = std::fs::canonicalize(allowed.join("a")).unwrap();
        assert_eq!(
            policy.check_url("s", &dir(&allowed.join("a"))).unwrap(),
            Some(real)
        );
        let e = refused(policy.check_url("s", &dir(&secret)));
        assert!(e.contains("outside the allowed store directories"), "{e}");
        let e = refused(policy.check_url("s", &dir(&allowed.join("link"))));
        assert!(e.contains("leads to"), "{e}");
        refused(policy.check_dir("s", &allowed.join("a/../../secret")));
        // A Redis unix socket is a local path too.
        let sock = url::Url::parse("redis:///run/redis/redis.sock").unwrap();
        refused(policy.check_url("s", &sock));
        // Nothing is allowed by default.
        refused(StorePolicy::default().check_url("s", &dir(&allowed.join("a"))));
        assert!(StorePolicy::new(vec![], vec![PathBuf::from("rel")]).is_err());
    }
}
