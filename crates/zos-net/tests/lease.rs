//! Leases under real concurrency: threads allocating at once (each with its own descriptor
//! on the lock file, as separate `zos run` processes have) never get one address or one
//! host port twice, and what one wrote the next sees (a restart reads the same file).

use std::collections::HashSet;
use std::path::PathBuf;
use zos_net::{allocate, release, PortMap};

/// Points the leases at a private dir: this test binary's only environment change, made
/// before any thread starts.
fn private_state() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("ZOS_NET_DIR", dir.path());
    dir
}

#[test]
fn concurrent_allocations_get_distinct_addresses_and_ports_stay_owned() {
    let state = private_state();
    let owners = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let base = owners.path().to_path_buf();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let owner: PathBuf = base.join(format!("vm-{t}-{i}"));
                        allocate(&owner, &[]).unwrap().ip
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in threads {
        for ip in t.join().unwrap() {
            assert!(seen.insert(ip), "{ip} given twice");
            assert!(zos_net::local::contains(ip) && ip != zos_net::local::GATEWAY);
        }
    }
    assert_eq!(seen.len(), 80);

    // A host port belongs to one VM until it is released.
    let port = PortMap::parse("127.0.0.1:1:80").unwrap();
    let first = owners.path().join("web-1");
    let second = owners.path().join("web-2");
    // Port 1 is privileged and unused here: the host check passes as root; skip otherwise.
    if let Err(e) = allocate(&first, std::slice::from_ref(&port)) {
        assert!(e.to_string().contains("host port"), "{e}");
        return;
    }
    let err = allocate(&second, std::slice::from_ref(&port)).unwrap_err();
    assert!(
        err.to_string().contains("already published by another VM"),
        "{err}"
    );
    // Refused: the second owner got nothing, so its address is still free.
    let file = std::fs::read_to_string(state.path().join("leases.json")).unwrap();
    assert!(
        !file.contains("web-2"),
        "a refused allocation left a lease:\n{file}"
    );
    release(&first).unwrap();
    let again = allocate(&second, std::slice::from_ref(&port)).unwrap();
    assert_eq!(again.ports, vec![port]);
}
