//! The engine's converge, remove, reconcile and monitor paths, driven through recording
//! workload types registered under the built-in names (no VM, no disk: the engine must do
//! its part whatever the types do).

use super::*;
use crate::workload::{Kind, Step};
use std::collections::BTreeSet;
use zos_types::{DeploymentFile, WorkloadSpec};

/// A workload type that keeps its "host resources" in memory and logs every call.
struct Recorder {
    name: &'static str,
    rank: u8,
    resources: Mutex<BTreeSet<String>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Workloads whose convergence fails.
    failing: Mutex<HashSet<String>>,
    /// Results the monitor hands back, by workload name.
    monitored: Mutex<HashMap<String, WorkloadResult>>,
}

impl Recorder {
    fn new(name: &'static str, rank: u8, log: &Arc<Mutex<Vec<String>>>) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            rank,
            resources: Mutex::default(),
            log: log.clone(),
            failing: Mutex::default(),
            monitored: Mutex::default(),
        })
    }

    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }

    fn held(&self) -> BTreeSet<String> {
        self.resources.lock().unwrap().clone()
    }
}

impl Kind for Recorder {
    fn type_name(&self) -> &'static str {
        self.name
    }
    fn rank(&self) -> u8 {
        self.rank
    }
    fn check(&self, _host: &Host, _spec: &WorkloadSpec) -> Result<(), String> {
        self.note(format!("check {}", self.name));
        Ok(())
    }
    fn demand(&self, spec: &WorkloadSpec) -> Resources {
        // Disks take disk alone, as the real ones do: hundreds of them fit any host.
        match spec {
            WorkloadSpec::Zmount(m) => Resources {
                cpus: 0,
                memory: 0,
                disk: m.size.0,
            },
            _ => Resources {
                cpus: 1,
                memory: 1 << 20,
                disk: 1 << 20,
            },
        }
    }
    fn converge(&self, _host: &Host, t: &Target) -> Step {
        let name = t.workload.name.to_string();
        let earlier: BTreeSet<String> = t
            .earlier
            .iter()
            .map(|(k, v)| format!("{k}={}", if v.is_ok() { "ok" } else { "bad" }))
            .collect();
        self.note(format!(
            "converge {} {name} fresh={} earlier={earlier:?}",
            self.name, t.fresh
        ));
        if self.failing.lock().unwrap().contains(&name) {
            return Step {
                result: Some(result(
                    ResultState::Error,
                    "it broke",
                    serde_json::Value::Null,
                )),
                usable: Err("it broke".into()),
            };
        }
        self.resources
            .lock()
            .unwrap()
            .insert(self.resource(t.id, &name));
        Step {
            result: t
                .fresh
                .then(|| result(ResultState::Ok, "made", serde_json::Value::Null)),
            usable: Ok(()),
        }
    }
    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}.{}", self.name)
    }
    fn resources(&self, _host: &Host) -> std::io::Result<Vec<String>> {
        Ok(self.held().into_iter().collect())
    }
    fn sweep(&self, _host: &Host) -> std::io::Result<()> {
        self.note(format!("sweep {}", self.name));
        Ok(())
    }
    fn remove(&self, _host: &Host, resource: &str) -> Result<(), String> {
        self.note(format!("remove {resource}"));
        self.resources.lock().unwrap().remove(resource);
        Ok(())
    }
    fn quarantine(
        &self,
        _host: &Host,
        resource: &str,
        into: &std::path::Path,
    ) -> Result<(), String> {
        assert!(into.is_dir(), "{}", into.display());
        self.note(format!("quarantine {resource}"));
        self.resources.lock().unwrap().remove(resource);
        Ok(())
    }
    fn monitors(&self) -> bool {
        // As the real types: machines run something that can die, disks do not.
        self.name == "zmachine"
    }
    fn watched(&self, w: &Workload) -> bool {
        self.monitored.lock().unwrap().contains_key(w.name.as_str())
    }
    fn monitor(&self, _host: &Host, _id: &str, w: &Workload) -> Option<WorkloadResult> {
        self.monitored.lock().unwrap().remove(w.name.as_str())
    }
    fn forget(&self, id: &str) {
        self.note(format!("forget {id}"));
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    disks: Arc<Recorder>,
    machines: Arc<Recorder>,
    log: Arc<Mutex<Vec<String>>>,
    owner: Keypair,
}

fn config(dir: &tempfile::TempDir) -> NodeConfig {
    NodeConfig {
        data_dir: dir.path().join("node"),
        // More than any disk has: the file system's own free space is what limits.
        disk: Some(zos_types::ByteSize(1 << 50)),
        reserve_memory: zos_types::ByteSize(0),
        ..NodeConfig::default()
    }
}

fn fixture() -> Fixture {
    fixture_with(crate::limits::OwnerLimits::default())
}

const APP: &str = r#"
name: app
workloads:
  - name: web
    type: zmachine
    data: { flist: /nowhere/app.fl, mounts: [{ name: data, mountpoint: /data }] }
  - name: data
    type: zmount
    data: { size: 16M }
"#;

impl Fixture {
    fn signed(&self, yaml: &str, version: u32) -> Deployment {
        let mut d = DeploymentFile::from_yaml_str(yaml)
            .unwrap()
            .into_deployment(self.owner.public(), self.engine.node_id());
        d.version = version;
        for w in &mut d.workloads {
            w.version = version;
        }
        d.sign(&self.owner);
        d
    }

    /// Deploys (version 0) or updates `yaml`, then forgets the admission's log lines.
    fn send(&self, yaml: &str, version: u32) {
        if version == 0 {
            self.engine.deploy(self.signed(yaml, 0)).unwrap();
        } else {
            self.engine
                .update("app", self.signed(yaml, version))
                .unwrap();
        }
        self.take_log();
    }

    fn quarantined(&self) -> Vec<String> {
        workload::names_in(&workload::quarantine_dir(&self.engine.host)).unwrap_or_default()
    }

    fn converge(&self) -> Deployment {
        self.engine.converge(&self.owner.public(), "app").unwrap();
        self.engine.get(&self.owner.public(), "app").unwrap()
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn id(&self) -> String {
        deployment_id(&self.owner.public(), "app")
    }
}

fn states(d: &Deployment) -> Vec<(String, ResultState, String)> {
    d.workloads
        .iter()
        .map(|w| {
            let r = w.result.as_ref().unwrap();
            (w.name.to_string(), r.state, r.message.clone())
        })
        .collect()
}

#[test]
fn converge_makes_lower_ranks_first_and_records_results() {
    let f = fixture();
    f.send(APP, 0);
    let d = f.converge();
    let id = f.id();
    // The disk first, though listed second; the machine sees it usable.
    assert_eq!(
        f.take_log(),
        [
            "converge zmount data fresh=true earlier={}".to_string(),
            r#"converge zmachine web fresh=true earlier={"data=ok"}"#.to_string(),
        ]
    );
    assert_eq!(
        states(&d),
        [
            ("web".into(), ResultState::Ok, "made".into()),
            ("data".into(), ResultState::Ok, "made".into())
        ]
    );
    assert_eq!(
        f.disks.held(),
        BTreeSet::from([format!("{id}-data.zmount")])
    );
    assert_eq!(
        f.machines.held(),
        BTreeSet::from([format!("{id}-web.zmachine")])
    );
    // A second pass keeps what runs: nothing fresh, nothing removed, results kept.
    let again = f.converge();
    assert_eq!(
        f.take_log(),
        [
            "converge zmount data fresh=false earlier={}".to_string(),
            r#"converge zmachine web fresh=false earlier={"data=ok"}"#.to_string(),
        ]
    );
    assert_eq!(states(&again), states(&d));
}

#[test]
fn a_failed_workload_is_passed_on_as_unusable_and_not_retried_until_redeployed() {
    let f = fixture();
    f.disks.failing.lock().unwrap().insert("data".into());
    f.send(APP, 0);
    let d = f.converge();
    assert_eq!(
        states(&d)[1],
        ("data".into(), ResultState::Error, "it broke".into())
    );
    assert_eq!(
        f.take_log()[1],
        r#"converge zmachine web fresh=true earlier={"data=bad"}"#
    );
    // Failed workloads are left alone by later passes…
    f.converge();
    assert_eq!(
        f.take_log(),
        [r#"converge zmachine web fresh=false earlier={"data=bad"}"#]
    );
    // …and retried by the next version.
    f.disks.failing.lock().unwrap().clear();
    f.send(APP, 1);
    let d = f.converge();
    assert_eq!(
        states(&d)[1],
        ("data".into(), ResultState::Ok, "made".into())
    );
}

#[test]
fn an_update_removes_what_the_deployment_no_longer_has() {
    let f = fixture();
    f.send(APP, 0);
    f.converge();
    f.take_log();
    let only_disk =
        "name: app\nworkloads:\n  - name: data\n    type: zmount\n    data: { size: 16M }\n";
    f.send(only_disk, 1);
    let d = f.converge();
    let id = f.id();
    assert_eq!(f.take_log()[0], format!("remove {id}-web.zmachine"));
    assert!(f.machines.held().is_empty());
    assert_eq!(
        f.disks.held(),
        BTreeSet::from([format!("{id}-data.zmount")])
    );
    assert_eq!(d.workloads.len(), 1);
}

#[test]
fn delete_removes_everything_and_forgets_it() {
    let f = fixture();
    f.send(APP, 0);
    f.converge();
    f.take_log();
    let tombstone = f.engine.delete(&f.owner.public(), "app").unwrap();
    assert!(tombstone
        .workloads
        .iter()
        .all(|w| w.result.as_ref().unwrap().state == ResultState::Deleted));
    assert!(f.disks.held().is_empty() && f.machines.held().is_empty());
    let log = f.take_log();
    assert!(log.contains(&format!("forget {}", f.id())), "{log:?}");
    // Its log is gone, and says so.
    let Err(EngineError::NotFound(m)) = f.engine.console(&f.owner.public(), "app", "web") else {
        panic!("a removed deployment has no console");
    };
    assert!(m.contains("was removed"), "{m}");
}

#[test]
fn reconcile_removes_only_what_no_deployment_owns() {
    let f = fixture();
    f.send(APP, 0);
    f.converge();
    let stray = "00000000000000000000000000-old.zmount".to_string();
    f.disks.resources.lock().unwrap().insert(stray.clone());
    f.take_log();
    // An expired quarantine goes, a recent one stays.
    let quarantine = workload::quarantine_dir(&f.engine.host);
    std::fs::create_dir_all(quarantine.join("1")).unwrap();
    let recent = (workload::now() - 60).to_string();
    std::fs::create_dir_all(quarantine.join(&recent)).unwrap();
    f.engine.reconcile().unwrap();
    // Half-made leftovers are swept before anything is judged; what no deployment owns is
    // set aside, never deleted in place.
    assert_eq!(
        f.take_log(),
        [
            "sweep zmount".to_string(),
            "sweep zmachine".to_string(),
            format!("quarantine {stray}")
        ]
    );
    assert_eq!(f.disks.held().len(), 1);
    assert_eq!(f.machines.held().len(), 1);
    let kept = f.quarantined();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains(&recent) && !kept.contains(&"1".to_string()));
}

#[test]
fn a_node_that_lost_its_database_refuses_to_start_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let disks = Recorder::new("zmount", 0, &log);
    disks
        .resources
        .lock()
        .unwrap()
        .insert("0123456789abcdef0123456789-data.zmount".into());
    let machines = Recorder::new("zmachine", 1, &log);
    let kinds = Kinds::new(vec![machines.clone(), disks.clone()]);
    let err = Engine::open_with(config(&dir), kinds.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains("0123456789abcdef0123456789-data.zmount"),
        "{err}"
    );
    assert!(err.contains("Restore"), "{err}");
    assert!(log.lock().unwrap().is_empty(), "touched: {:?}", log.lock());
    assert_eq!(disks.held().len(), 1);
    // The same host with nothing on it starts as a new node.
    disks.resources.lock().unwrap().clear();
    Engine::open_with(config(&dir), kinds).unwrap();
}

#[test]
fn signatures_are_checked_before_anything_on_the_host() {
    let f = fixture();
    let mut forged = f.signed(APP, 0);
    forged.signatures.clear();
    assert!(matches!(
        f.engine.deploy(forged),
        Err(EngineError::Unauthorized(_))
    ));
    assert!(f.take_log().is_empty());
    f.engine.deploy(f.signed(APP, 0)).unwrap();
    assert_eq!(f.take_log(), ["check zmachine", "check zmount"]);
}

#[test]
fn a_zmount_larger_than_the_disk_has_free_is_refused() {
    let f = fixture();
    let huge = APP.replace("size: 16M", "size: 512T");
    let Err(EngineError::NoCapacity(m)) = f.engine.deploy(f.signed(&huge, 0)) else {
        panic!("a 512 TiB zmount was admitted");
    };
    assert!(m.contains("disk: 512 TiB asked"), "{m}");
    assert!(f.engine.list(&f.owner.public(), true).unwrap().is_empty());
}

#[test]
fn the_monitor_records_what_a_type_reports_for_its_watched_workloads() {
    let f = fixture();
    f.send(APP, 0);
    f.converge();
    f.machines.monitored.lock().unwrap().insert(
        "web".into(),
        result(ResultState::Error, "crashed", serde_json::Value::Null),
    );
    f.engine.monitor_once().unwrap();
    let d = f.engine.get(&f.owner.public(), "app").unwrap();
    assert_eq!(
        states(&d)[0],
        ("web".into(), ResultState::Error, "crashed".into())
    );
    // Unwatched workloads are not asked.
    f.engine.monitor_once().unwrap();
}

#[test]
fn admission_counts_what_each_type_demands_and_errors_are_typed() {
    let f = fixture();
    let info = f.engine.info();
    f.send(APP, 0);
    let used = f.engine.info().used;
    assert_eq!((used.cpus, used.memory), (1, 1 << 20));
    assert!(info.used.cpus == 0);
    assert!(matches!(
        f.engine.deploy(f.signed(APP, 0)),
        Err(EngineError::Conflict(_))
    ));
    let mut forged = f.signed(APP, 1);
    forged.signatures.clear();
    assert!(matches!(
        f.engine.update("app", forged),
        Err(EngineError::Unauthorized(_))
    ));
    assert!(matches!(
        f.engine.get(&f.owner.public(), "nope"),
        Err(EngineError::NotFound(_))
    ));
}

/// A fixture whose node has `limits`.
fn fixture_with(limits: crate::limits::OwnerLimits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let disks = Recorder::new("zmount", 0, &log);
    let machines = Recorder::new("zmachine", 1, &log);
    // Registered in the "wrong" order: the registry sorts by rank.
    let kinds = Kinds::new(vec![machines.clone(), disks.clone()]);
    let cfg = NodeConfig {
        limits,
        ..config(&dir)
    };
    let engine = Engine::open_with(cfg, kinds).unwrap();
    Fixture {
        _dir: dir,
        engine,
        disks,
        machines,
        log,
        owner: Keypair::from_seed(&[7; 32]),
    }
}

/// A deployment of `n` 16M zmounts named `name`.
fn disks_yaml(name: &str, n: usize) -> String {
    let mut yaml = format!("name: {name}\nworkloads:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: d{i}\n    type: zmount\n    data: {{ size: 16M }}\n"
        ));
    }
    yaml
}

#[test]
fn each_owner_limit_refuses_with_its_name_and_value() {
    let f = fixture_with(crate::limits::OwnerLimits {
        deployments_per_owner: 2,
        workloads_per_deployment: 3,
        deployment_bytes: zos_types::ByteSize(4096),
        owner_bytes: zos_types::ByteSize(4000),
        requests_per_second: 0.001,
        request_burst: 6,
    });
    let Err(EngineError::OverLimit(m)) = f.engine.deploy(f.signed(&disks_yaml("a", 4), 0)) else {
        panic!("4 workloads were admitted");
    };
    assert!(m.contains("limits.workloads_per_deployment = 3"), "{m}");

    let big = format!("{}description: {}\n", disks_yaml("a", 1), "x".repeat(5000));
    let Err(EngineError::TooLarge(m)) = f.engine.deploy(f.signed(&big, 0)) else {
        panic!("a 5 kB deployment was admitted");
    };
    assert!(m.contains("limits.deployment_bytes = 4 KiB"), "{m}");

    f.engine.deploy(f.signed(&disks_yaml("a", 1), 0)).unwrap();
    let mid = format!("{}description: {}\n", disks_yaml("b", 1), "x".repeat(3000));
    let Err(EngineError::OverLimit(m)) = f.engine.deploy(f.signed(&mid, 0)) else {
        panic!("the owner's bytes went over");
    };
    assert!(m.contains("limits.owner_bytes"), "{m}");
    f.engine.deploy(f.signed(&disks_yaml("b", 1), 0)).unwrap();
    let Err(EngineError::OverLimit(m)) = f.engine.deploy(f.signed(&disks_yaml("c", 1), 0)) else {
        panic!("a third deployment was admitted");
    };
    assert!(m.contains("limits.deployments_per_owner = 2"), "{m}");

    // Six requests so far: the bucket is empty for this owner, not for another.
    let Err(EngineError::TooManyRequests(m)) = f.engine.throttle(&f.owner.public()) else {
        panic!("a seventh request went through");
    };
    assert!(m.contains("limits.requests_per_second = 0.001"), "{m}");
    f.engine
        .throttle(&Keypair::from_seed(&[8; 32]).public())
        .unwrap();
}

#[test]
fn a_pass_writes_its_results_once_not_once_per_workload() {
    let f = fixture();
    let yaml = disks_yaml("app", 50);
    f.send(&yaml, 0);
    let (writes, _) = f.engine.store.writes();
    let d = f.converge();
    assert!(states(&d).iter().all(|(_, s, _)| *s == ResultState::Ok));
    let (after, bytes) = f.engine.store.writes();
    // 50 results, one transaction (it was 50, each rewriting the whole deployment).
    assert_eq!(after - writes, 1, "{bytes} bytes written");
    // A pass that changes nothing writes nothing.
    f.converge();
    assert_eq!(f.engine.store.writes().0, after);
}

#[test]
fn a_second_owners_zmount_is_served_while_the_first_owners_hundreds_converge() {
    let f = fixture();
    let other = Keypair::from_seed(&[9; 32]);
    // Owner A: two deployments of 200 zmounts each, queued first.
    for name in ["flood1", "flood2"] {
        f.engine
            .deploy(f.signed(&disks_yaml(name, 200), 0))
            .unwrap();
    }
    let mut small = DeploymentFile::from_yaml_str(&disks_yaml("small", 1))
        .unwrap()
        .into_deployment(other.public(), f.engine.node_id());
    small.sign(&other);
    f.engine.deploy(small).unwrap();
    let served = |owner: &Keypair, name: &str| {
        let d = f.engine.get(&owner.public(), name).unwrap();
        d.workloads
            .iter()
            .filter(|w| state(w) == Some(ResultState::Ok))
            .count()
    };
    let mut turns = 0;
    while served(&other, "small") == 0 {
        assert!(
            f.engine.work_once(),
            "the queue ran dry before owner B was served"
        );
        turns += 1;
    }
    // B came after one slice of A's (not after A's 400 workloads), and A is still going.
    let a_done = served(&f.owner, "flood1") + served(&f.owner, "flood2");
    assert_eq!(turns, 2, "owner B waited {turns} turns");
    assert_eq!(
        a_done, SLICE,
        "owner A had {a_done} workloads converged first"
    );
    // The rest converges, a slice at a time, with one write per slice.
    let writes = f.engine.store.writes().0;
    while f.engine.work_once() {}
    assert_eq!(served(&f.owner, "flood1") + served(&f.owner, "flood2"), 400);
    let slice = SLICE as u64;
    let slices = (200 - slice).div_ceil(slice) + 200u64.div_ceil(slice);
    assert_eq!(f.engine.store.writes().0 - writes, slices);
    // A disk made in one slice is known as usable to a machine converged in a later one.
    let app = format!(
        "{}  - name: web\n    type: zmachine\n    data: {{ flist: /nowhere/app.fl, mounts: [{{ name: d0, mountpoint: /data }}] }}\n",
        disks_yaml("app", SLICE + 1)
    );
    f.engine.deploy(f.signed(&app, 0)).unwrap();
    f.take_log();
    while f.engine.work_once() {}
    let log = f.take_log();
    let web = log.iter().find(|l| l.contains("zmachine web")).unwrap();
    assert!(
        web.contains("\"d0=ok\"") && web.contains(&format!("\"d{SLICE}=ok\"")),
        "{web}"
    );
}

#[test]
fn a_tombstone_keeps_what_replay_protection_needs_and_nothing_more() {
    let f = fixture();
    let fat = format!(
        "{}description: {}\n",
        disks_yaml("app", 3),
        "x".repeat(100_000)
    );
    f.send(&fat, 0);
    f.converge();
    let gone = f.engine.delete(&f.owner.public(), "app").unwrap();
    // The caller is told what went…
    assert_eq!(gone.workloads.len(), 3);
    // …the database keeps the name, owner, version and requirement alone.
    let stored = f.engine.store.owner_bytes(&f.owner.public(), None).unwrap();
    assert!(stored < 1000, "a tombstone takes {stored} bytes");
    let tomb = f.engine.get(&f.owner.public(), "app").unwrap();
    assert_eq!(tomb.version, 1);
    assert!(tomb.workloads.is_empty() && tomb.description.is_empty());
    assert!(f.engine.list(&f.owner.public(), false).unwrap().is_empty());
    assert_eq!(f.engine.list(&f.owner.public(), true).unwrap().len(), 1);
    // Old signed versions cannot return; a version signed after the delete can.
    assert!(matches!(
        f.engine.deploy(f.signed(&fat, 0)),
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        f.engine.update("app", f.signed(&disks_yaml("app", 1), 1)),
        Err(EngineError::Conflict(_))
    ));
    let back = f
        .engine
        .update("app", f.signed(&disks_yaml("app", 1), 2))
        .unwrap();
    assert_eq!(states(&back)[0].1, ResultState::Init);
}

#[test]
fn the_monitor_reads_only_deployments_with_something_to_watch() {
    let f = fixture();
    for i in 0..10 {
        f.engine
            .deploy(f.signed(&disks_yaml(&format!("disks{i}"), 2), 0))
            .unwrap();
    }
    f.send(APP, 0);
    while f.engine.work_once() {}
    let reads = f.engine.store.reads();
    f.engine.monitor_once().unwrap();
    // One deployment has a machine: one read, not eleven.
    assert_eq!(f.engine.store.reads() - reads, 1);
    f.engine.delete(&f.owner.public(), "app").unwrap();
    let reads = f.engine.store.reads();
    f.engine.monitor_once().unwrap();
    assert_eq!(f.engine.store.reads(), reads);
}

#[test]
fn every_signer_of_a_co_owned_deployment_can_read_it_and_no_one_else() {
    let f = fixture();
    let (co, stranger) = (Keypair::from_seed(&[10; 32]), Keypair::from_seed(&[11; 32]));
    let shared = format!(
        "{}signature_requirement:\n  weight_required: 1\n  requests:\n    - {{ key: {}, weight: 1, required: true }}\n    - {{ key: {}, weight: 1 }}\n",
        disks_yaml("shared", 1),
        f.owner.public(),
        co.public()
    );
    f.engine.deploy(f.signed(&shared, 0)).unwrap();
    f.engine
        .deploy(f.signed(&disks_yaml("mine", 1), 0))
        .unwrap();
    let owner = f.owner.public();
    // The co-owner finds it by name, lists it, and sees its events; a stranger does not.
    assert_eq!(
        f.engine.read(&co.public(), None, "shared").unwrap().owner,
        owner
    );
    assert_eq!(
        f.engine
            .read(&co.public(), Some(&owner), "shared")
            .unwrap()
            .name,
        "shared"
    );
    let names: Vec<String> = f
        .engine
        .list(&co.public(), false)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["shared"]);
    assert!(f.engine.may_read(&co.public(), &owner, "shared"));
    assert!(!f.engine.may_read(&co.public(), &owner, "mine"));
    for name in ["shared", "mine"] {
        assert!(matches!(
            f.engine.read(&stranger.public(), Some(&owner), name),
            Err(EngineError::NotFound(_))
        ));
        assert!(matches!(
            f.engine.read(&stranger.public(), None, name),
            Err(EngineError::NotFound(_))
        ));
    }
    assert!(matches!(
        f.engine.read(&co.public(), None, "mine"),
        Err(EngineError::NotFound(_))
    ));
    assert!(f.engine.list(&stranger.public(), true).unwrap().is_empty());
    // Its owner's list is unchanged.
    assert_eq!(f.engine.list(&owner, false).unwrap().len(), 2);
    // A version that drops the co-owner (the old requirement needs the owner alone) takes
    // their reading away.
    let alone = f.signed(&disks_yaml("shared", 1), 1);
    f.engine.update("shared", alone).unwrap();
    assert!(!f.engine.may_read(&co.public(), &owner, "shared"));
    assert!(f.engine.list(&co.public(), true).unwrap().is_empty());
}

#[test]
fn the_lock_map_keeps_only_locks_in_use() {
    let f = fixture();
    let owner = f.owner.public();
    let held = f.engine.lock_for(&owner, "held");
    for i in 0..100 {
        drop(f.engine.lock_for(&owner, &format!("d{i}")));
    }
    let again = f.engine.lock_for(&owner, "held");
    assert!(
        Arc::ptr_eq(&held, &again),
        "a held lock is the one handed out again"
    );
    let size = f.engine.locks.lock().unwrap().len();
    assert_eq!(size, 1, "only the held lock is left");
}
