//! What the node tests (node, node_listeners) share: a real `zos node run` in a temp dir with
//! two users' keys and a busybox flist, listening on a unix socket and on TCP, driven by the
//! `zos` CLI and by raw signed HTTP requests. VMs it left are removed when it is dropped.
#![allow(dead_code)]

use crate::common::{self, ok, zos};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zos_types::{Deployment, DeploymentFile, Keypair, PublicKey, RequestAuth};

/// A node in a temp dir with two users' keys (alice, bob) and a busybox flist, listening on a
/// unix socket and on TCP.
pub struct Node {
    tmp: tempfile::TempDir,
    child: Option<Child>,
    /// The busybox flist (FLIST in the tests' YAML).
    pub fl: PathBuf,
    /// The TCP address the node also listens on.
    pub tcp: String,
    /// Its TCP listen entry, `ADDR` standing for [`Self::tcp`] (e.g. `tcp://ADDR?insecure`).
    tcp_listen: String,
    extra_config: String,
    /// The network namespace the node runs in (a test's other host), if not the test's.
    netns: Option<String>,
}

impl Node {
    /// Starts a node whose config ends with `extra_config`, TLS on its TCP listener.
    pub fn start(extra_config: &str) -> Node {
        Node::start_with("tcp://ADDR", extra_config)
    }

    /// Starts a node whose TCP listen entry is `tcp_listen` (`ADDR` replaced by a free port's
    /// address) and whose config ends with `extra_config`.
    pub fn start_with(tcp_listen: &str, extra_config: &str) -> Node {
        Node::start_full(tcp_listen, extra_config, None)
    }

    /// Starts a node inside network namespace `netns` (it listens on its unix socket only,
    /// which the test reaches from anywhere), its config ending with `extra_config`.
    pub fn start_in_netns(netns: &str, extra_config: &str) -> Node {
        Node::start_full("", extra_config, Some(netns.to_string()))
    }

    fn start_full(tcp_listen: &str, extra_config: &str, netns: Option<String>) -> Node {
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "df", "env", "hostname", "mkdir", "grep", "ip", "nc",
            "httpd", "nslookup", "wc", "id", "ln", "tty", "stty", "true",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let fl = common::pack(&root, tmp.path(), "bb.fl");
        for user in ["alice", "bob"] {
            ok(zos()
                .args(["key", "new", "-o"])
                .arg(tmp.path().join(format!("{user}.pem"))));
        }
        // A free port: bound by the OS, released, then taken by the node.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut node = Node {
            tmp,
            child: None,
            fl,
            tcp,
            tcp_listen: tcp_listen.to_string(),
            extra_config: extra_config.to_string(),
            netns,
        };
        node.boot();
        node
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("node.sock")
    }

    pub fn data(&self) -> PathBuf {
        self.dir().join("node")
    }

    /// (Re)starts `zos node run`, waiting for both its listeners to answer.
    pub fn boot(&mut self) {
        let config = self.dir().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"unix://{}\"{}]\ncache_dir = {:?}\nreserve_memory = \"1G\"\nflist_dirs = [{:?}]\nallow_store_dirs = [{:?}]\n{}\n",
                self.data(),
                self.socket().display(),
                match self.tcp_listen.as_str() {
                    "" => String::new(),
                    listen => format!(", \"{}\"", listen.replace("ADDR", &self.tcp)),
                },
                self.dir().join("cache"),
                self.dir(),
                // common::pack's dir:// store: the store policy allows no local path unasked.
                self.dir().join("store"),
                self.extra_config
            ),
        )
        .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("node.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zos"));
        if let Some(ns) = &self.netns {
            zos_net::netns::command_in(&mut cmd, ns).unwrap();
        }
        let child = cmd
            .args(["node", "run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let tcp_down = || !self.tcp_listen.is_empty() && TcpStream::connect(&self.tcp).is_err();
        while UnixStream::connect(self.socket()).is_err() || tcp_down() {
            assert!(
                Instant::now() < deadline,
                "the node did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node the way a service manager does (SIGTERM); returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node runs");
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// The running node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("the node runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("node.log")).unwrap_or_default()
    }

    pub fn key(&self, user: &str) -> PathBuf {
        self.dir().join(format!("{user}.pem"))
    }

    pub fn keypair(&self, user: &str) -> Keypair {
        zos_types::read_key_file(&self.key(user)).unwrap()
    }

    /// `zos ARGS --node unix://SOCKET --key USER`.
    pub fn cli(&self, user: &str, args: &[&str]) -> Command {
        self.cli_at(user, &format!("unix://{}", self.socket().display()), args)
    }

    /// `zos ARGS --node URL --key USER`.
    pub fn cli_at(&self, user: &str, url: &str, args: &[&str]) -> Command {
        let mut cmd = zos();
        cmd.args(args)
            .args(["--node", url, "--key"])
            .arg(self.key(user));
        cmd
    }

    pub fn write_yaml(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir().join(file);
        std::fs::write(&path, text.replace("FLIST", &self.fl.display().to_string())).unwrap();
        path
    }

    /// The node's id, from its one unsigned endpoint.
    pub fn id(&self) -> PublicKey {
        let (status, body) = raw_http(&self.socket(), "GET", "/v1/node/id", None, b"");
        assert_eq!(status, 200, "{body}");
        let identity: zos_types::api::NodeIdentity = serde_json::from_str(&body).unwrap();
        identity.node_id
    }

    /// A raw request over the unix socket, signed by `user` for this node unless `None`.
    pub fn http(&self, user: Option<&str>, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let (_, status, answer) = self.signed(user, method, path, body, true);
        (status, answer)
    }

    /// Opens a connection on the unix socket and sends a request signed by `user` (unless
    /// `None`), with `Connection: close` when `close`; returns the connection and the
    /// answer's status and (when closing) its body.
    pub fn signed(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> (UnixStream, u16, String) {
        let auth = user.map(|u| {
            RequestAuth::sign(&self.keypair(u), &self.id(), method, path, unix_now(), body)
                .to_header()
        });
        let mut s = UnixStream::connect(self.socket()).unwrap();
        // A node that stalls fails the test rather than hanging it.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (status, text) = exchange(&mut s, method, path, auth.as_deref(), body, close);
        (s, status, text)
    }

    /// `yaml` (FLIST replaced by the busybox flist) as a deployment of `owner` for this node.
    pub fn deployment(&self, owner: &str, yaml: &str) -> Deployment {
        let text = yaml.replace("FLIST", &self.fl.display().to_string());
        DeploymentFile::from_yaml_str(&text)
            .unwrap()
            .into_deployment(self.keypair(owner).public(), self.id())
    }

    /// Deploys `yaml` as `user` and waits until no workload is `init`; returns the deployment
    /// as JSON.
    pub fn deploy_settled(&self, user: &str, yaml: &str) -> serde_json::Value {
        let mut d = self.deployment(user, yaml);
        let body = signed_json(&mut d, &self.keypair(user));
        let (status, answer) = self.http(None, "POST", "/v1/deployments", &body);
        assert_eq!(status, 201, "{answer}");
        self.settled(user, &d.name)
    }

    /// Waits until no workload of `name` is `init`; returns the deployment as JSON.
    pub fn settled(&self, user: &str, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (status, body) =
                self.http(Some(user), "GET", &format!("/v1/deployments/{name}"), b"");
            assert_eq!(status, 200, "{body}");
            let d: serde_json::Value = serde_json::from_str(&body).unwrap();
            let busy = d["workloads"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["result"]["state"] == "init");
            if !busy {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "still provisioning: {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data().join(sub))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The namespaces of the node's networks (named `zos-` and the first 8 hex characters
    /// of its id, read from its identity file, so this works with the node down).
    pub fn namespaces(&self) -> Vec<String> {
        let Ok(key) = zos_types::read_key_file(&self.data().join("identity.pem")) else {
            return Vec::new();
        };
        let prefix = format!("zos-{}-", &key.public().to_string()[..8]);
        let mut out: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Mounts under the node's data dir.
    pub fn mounts(&self) -> Vec<String> {
        let data = self.data().display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&data))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // Leave no network behind a failed test: its namespace's processes and itself.
        for ns in self.namespaces() {
            common::kill_netns(&ns);
        }
        // Leave no VM behind a failed test: a plain `zos vm rm` of each.
        for vm in self.entries("vms") {
            let _ = zos()
                .args(["vm", "rm", &vm, "--data-dir"])
                .arg(self.data())
                .output();
        }
    }
}

/// Seconds since the epoch, as request signatures carry them.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// HTTP/1.1 over a unix socket, one request per connection.
pub fn raw_http(
    socket: &Path,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    exchange(&mut s, method, path, auth, body, true)
}

/// Sends one HTTP/1.1 request on `s` and reads the answer's head; with `close`, also the
/// rest of the answer (the node closes after it). Returns the status and what was read of
/// the body.
pub fn exchange(
    s: &mut UnixStream,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
    close: bool,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("Connection: close\r\n");
    }
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    // One write: a node that answers before reading the body (a 404) may close early, and
    // a second write would then fail with a broken pipe.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = s.write_all(&bytes);
    let mut out = Vec::new();
    if close {
        s.read_to_end(&mut out).unwrap();
    } else {
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).unwrap();
            assert!(n > 0, "the node closed before its answer's head");
            out.push(byte[0]);
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `d` signed by `key`, as the API's JSON body.
pub fn signed_json(d: &mut Deployment, key: &Keypair) -> Vec<u8> {
    d.sign(key);
    serde_json::to_vec(d).unwrap()
}
