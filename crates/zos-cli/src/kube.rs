//! `zos kube …`: Kubernetes clusters of zmachines, made and changed through `zos_client::kube`
//! as one signed deployment each.

use crate::client::ClientArgs;
use crate::deploy::{send, Waiting};
use crate::output::table;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use zos_client::kube::{self, Cluster, Root};
use zos_client::{plan, NodeClient, NodeUrl};
use zos_types::api::{CopyDirection, CopyRequest, StreamOut};
use zos_types::{ByteSize, Deployment, WorkloadName};

/// `zos kube …`.
#[derive(Subcommand)]
pub enum KubeCommand {
    /// Create a cluster: a private network, a master and workers, each with a disk at
    /// /mydisk, wired by k3s's environment variables
    #[command(
        after_help = "Every cluster node runs the image with ThreeFold's k3s contract: \
K3S_URL (empty on the master, https://MASTER_IP:6443 on workers), K3S_TOKEN (sealed to the \
node), K3S_DATA_DIR=/mydisk, K3S_NODE_NAME, K3S_FLANNEL_IFACE=eth0 and SSH_KEY. The master's \
6443 is published on the node (--api-port). zos waits until it answers; a cluster whose master \
never does is removed again, its console shown.\n\
Examples:\n  zos kube create demo --workers 2 --image docker://registry.local/k3s:v1.29\n  \
zos kube create demo --workers 1 --flist https://hub.example/k3s.fl --memory 2G --disk 20G"
    )]
    Create(Box<CreateArgs>),
    /// Add or remove workers (the highest-numbered go first); the others keep running
    /// untouched
    Scale {
        /// The cluster
        name: String,
        /// How many workers it should have
        #[arg(long)]
        workers: u32,
        /// Give up waiting for new workers after this long
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the cluster's kubeconfig (k3s's, from the master), its server pointed at the
    /// master's API as published on the node
    Kubeconfig {
        /// The cluster
        name: String,
        /// Write it to this file (mode 0600) instead of standard output
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List your clusters
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a cluster: its machines, disks and network
    Rm {
        /// The cluster
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `zos kube create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The cluster's name (its deployment's): letters, digits, '-' and '_'
    name: String,
    /// Workers
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// The k3s image every cluster node runs (docker://HOST/NAME:TAG)
    #[arg(long, conflicts_with = "flist", required_unless_present = "flist")]
    image: Option<String>,
    /// Or an flist of it: a URL, or a .fl file on the node
    #[arg(long)]
    flist: Option<String>,
    /// Virtual CPUs per cluster node
    #[arg(long, default_value_t = 1)]
    cpu: u8,
    /// Memory per cluster node
    #[arg(long, default_value = "1G", value_parser = ByteSize::parse)]
    memory: ByteSize,
    /// Disk per cluster node, mounted at /mydisk (K3S_DATA_DIR)
    #[arg(long, default_value = "5G", value_parser = ByteSize::parse)]
    disk: ByteSize,
    /// An SSH public key file: its first key goes to every node as SSH_KEY
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// The cluster token, 6 to 15 letters and digits [default: a random one]
    #[arg(long)]
    token: Option<String>,
    /// The node's port for the master's API [default: 6443, or the next one your other
    /// deployments leave free]
    #[arg(long)]
    api_port: Option<u16>,
    /// The cluster network's range, a /16 [default: the first free 10.N.0.0/16 from N=100]
    #[arg(long, value_name = "CIDR")]
    ip_range: Option<ipnet::Ipv4Net>,
    /// Give up waiting for the master's API after this long
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `zos kube …`.
pub fn kube(cmd: KubeCommand) -> Result<ExitCode> {
    match cmd {
        KubeCommand::Create(args) => create(*args),
        KubeCommand::Scale {
            name,
            workers,
            timeout,
            client,
        } => scale(&name, workers, timeout, &client),
        KubeCommand::Kubeconfig {
            name,
            output,
            client,
        } => kubeconfig(&name, output.as_deref(), &client),
        KubeCommand::Ls { client } => ls(&client),
        KubeCommand::Rm { name, client } => {
            let node = client.connect()?;
            cluster_named(&node, &name)?;
            node.remove(&name)?;
            eprintln!("removed cluster {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(args: CreateArgs) -> Result<ExitCode> {
    zos_client::check_deployment_name(&args.name)?;
    let token = match args.token {
        Some(t) => {
            kube::check_token(&t).map_err(|e| anyhow!("--token: {e}"))?;
            t
        }
        None => {
            let mut random = [0u8; 15];
            getrandom::getrandom(&mut random)
                .map_err(|e| anyhow!("drawing a random cluster token: {e}"))?;
            kube::token_from(&random)
        }
    };
    let ssh_key = args.ssh_key.as_deref().map(first_key).transpose()?;
    let root = match (args.image, args.flist) {
        (Some(image), _) => Root::Image(image),
        (None, Some(flist)) => Root::Flist(flist),
        (None, None) => bail!("give the k3s image: --image docker://… or --flist URL|PATH"),
    };
    let node = args.client.connect()?;
    let mine = node.deployments(false)?.value;
    if mine.iter().any(|d| d.name == args.name) {
        bail!(
            "you have a deployment named {} already: pick another name, or remove it first \
             (`zos kube rm {0}` for a cluster)",
            args.name
        );
    }
    let cluster = Cluster {
        masters: 1,
        workers: args.workers,
        root,
        cpu: args.cpu,
        memory: args.memory,
        disk: args.disk,
        ssh_key,
        api_port: args.api_port.unwrap_or_else(|| kube::free_api_port(&mine)),
        ip_range: match args.ip_range {
            Some(range) => range,
            None => kube::free_range(&mine)
                .context("no 10.N.0.0/16 is free among your networks: give --ip-range")?,
        },
    };
    cluster.check().map_err(|e| anyhow!("{e}"))?;
    let sealed = zos_seal::seal(&node.node_id()?, token.as_bytes())?;
    let file = cluster
        .file(&args.name, &sealed)
        .map_err(|e| anyhow!("{e}"))?;
    let deployment = plan(&node, file, Path::new(&args.name))?.sign(node.key());
    eprintln!(
        "creating cluster {}: a master and {} worker(s) on {}",
        args.name, cluster.workers, cluster.ip_range
    );
    let waiting = Waiting {
        timeout: args.timeout,
        no_wait: false,
        settle: Duration::from_secs(5),
        json: false,
    };
    // Nothing half-made: a cluster that does not come up is removed again.
    let up = send(&waiting, &node, deployment)
        .and_then(|_| api_answers(&node, &args.name, &cluster, args.timeout));
    if let Err(e) = up {
        if let Err(gone) = node.remove(&args.name) {
            eprintln!("warning: removing the failed cluster {}: {gone}", args.name);
        }
        return Err(e.context(format!("cluster {} removed again", args.name)));
    }
    let host = api_host(node.url());
    println!(
        "cluster {} is up: API at https://{host}:{} (master {}); `zos kube kubeconfig {0} -o \
         kubeconfig` for kubectl",
        args.name,
        cluster.api_port,
        cluster.master_ip(1)
    );
    Ok(ExitCode::SUCCESS)
}

/// The first key line of an SSH public key file.
fn first_key(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the SSH key {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .with_context(|| format!("{}: no key in it", path.display()))
}

/// Where the user reaches what the node publishes: the node's host, or this machine for a
/// node on a local socket.
fn api_host(url: &NodeUrl) -> String {
    match url {
        NodeUrl::Unix(_) => "127.0.0.1".into(),
        NodeUrl::Http { host, .. } => host.clone(),
    }
}

/// Waits until the master's published API takes connections; else fails with the tail of
/// its console.
fn api_answers(node: &NodeClient, name: &str, cluster: &Cluster, timeout: Duration) -> Result<()> {
    let host = api_host(node.url());
    let addrs: Vec<_> = (host.as_str(), cluster.api_port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let deadline = Instant::now() + timeout;
    eprintln!(
        "waiting for the master's API on {host}:{}",
        cluster.api_port
    );
    while Instant::now() < deadline {
        let open = addrs
            .iter()
            .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
        if open {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let master = WorkloadName::try_from("master1".to_string()).map_err(|e| anyhow!("{e}"))?;
    let mut console = Vec::new();
    let _ = node.logs(name, &master, |chunk| {
        console.extend_from_slice(chunk);
        Ok(())
    });
    let text = String::from_utf8_lossy(&console);
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "the master's API ({API}) did not answer within {}; is the image a k3s image \
         honouring K3S_URL and K3S_TOKEN? The master's console ends:\n{}",
        humantime::format_duration(timeout),
        tail.join("\n"),
        API = kube::API_PORT,
    )
}

/// The cluster deployment named `name`, with its cluster.
fn cluster_named(node: &NodeClient, name: &str) -> Result<(Deployment, Cluster)> {
    zos_client::check_deployment_name(name)?;
    let Some(found) = node.find_deployment(name)? else {
        bail!("no cluster named {name}: `zos kube ls` lists yours");
    };
    let d = found.value;
    let cluster = Cluster::of(&d).with_context(|| {
        format!("{name} is a deployment, not a cluster made by `zos kube create`")
    })?;
    Ok((d, cluster))
}

fn scale(name: &str, workers: u32, timeout: Duration, client: &ClientArgs) -> Result<ExitCode> {
    let node = client.connect()?;
    let (current, cluster) = cluster_named(&node, name)?;
    if cluster.workers == workers {
        eprintln!("cluster {name} has {workers} worker(s) already");
        return Ok(ExitCode::SUCCESS);
    }
    let sealed = kube::sealed_token(&current)
        .with_context(|| format!("cluster {name} has lost its master's token"))?;
    let scaled = Cluster { workers, ..cluster };
    scaled.check().map_err(|e| anyhow!("{e}"))?;
    let file = scaled.file(name, &sealed).map_err(|e| anyhow!("{e}"))?;
    // The workloads of the nodes kept are written as they were: the node leaves them be.
    let next = plan(&node, file, Path::new(name))?.sign(node.key());
    eprintln!(
        "scaling cluster {name}: {} -> {workers} worker(s)",
        cluster.workers
    );
    let waiting = Waiting {
        timeout,
        no_wait: false,
        settle: Duration::from_secs(5),
        json: client.json,
    };
    send(&waiting, &node, next)
}

fn kubeconfig(name: &str, output: Option<&Path>, client: &ClientArgs) -> Result<ExitCode> {
    let node = client.connect()?;
    let (_, cluster) = cluster_named(&node, name)?;
    let master = WorkloadName::try_from("master1".to_string()).map_err(|e| anyhow!("{e}"))?;
    let request = CopyRequest {
        path: kube::KUBECONFIG_PATH.into(),
        direction: CopyDirection::Out,
    };
    let (_no_input, input) = std::sync::mpsc::channel();
    let mut archive = Vec::new();
    let (code, error) = node.copy(name, &master, &request, input, |out| {
        if let StreamOut::Stdout(data) = out {
            archive.extend_from_slice(&data);
        }
        Ok(())
    })?;
    if code != 0 {
        bail!(
            "reading {} on the master: {} (has k3s started? see `zos logs {name}/master1`)",
            kube::KUBECONFIG_PATH,
            error.unwrap_or_else(|| format!("exit {code}"))
        );
    }
    let text = first_file(&archive)?;
    let config = kube::kubeconfig_for(&text, &api_host(node.url()), cluster.api_port)
        .map_err(|e| anyhow!("{e}"))?;
    match output {
        None => print!("{config}"),
        Some(path) => write_private(path, &config)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of the one file in a tar archive.
fn first_file(archive: &[u8]) -> Result<String> {
    let mut tar = tar::Archive::new(archive);
    let mut entry = tar
        .entries()
        .context("reading the copy of the kubeconfig")?
        .next()
        .context("the copy of the kubeconfig was empty")?
        .context("reading the copy of the kubeconfig")?;
    let mut text = String::new();
    entry
        .read_to_string(&mut text)
        .context("the kubeconfig is not text")?;
    Ok(text)
}

/// Writes `text` to `path`, readable by its owner alone (it holds the cluster's admin key).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let mut file = tempfile::Builder::new()
        .prefix(".kubeconfig-")
        .tempfile_in(dir.unwrap_or(Path::new(".")))
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // tempfile makes it 0600 already; said again for a file that existed before.
    let _ = std::fs::OpenOptions::new().mode(0o600).open(path);
    Ok(())
}

fn ls(client: &ClientArgs) -> Result<ExitCode> {
    let node = client.connect()?;
    let host = api_host(node.url());
    let mut rows = Vec::new();
    for d in node.deployments(false)?.value {
        let Some(cluster) = Cluster::of(&d) else {
            continue;
        };
        let machines: Vec<_> = d
            .workloads
            .iter()
            .filter(|w| matches!(w.spec, zos_types::WorkloadSpec::Zmachine(_)))
            .collect();
        let running = machines
            .iter()
            .filter(|w| zos_client::status::state_label(w) == "ok")
            .count();
        rows.push(vec![
            d.name.clone(),
            cluster.masters.to_string(),
            cluster.workers.to_string(),
            format!("{running}/{}", machines.len()),
            format!("https://{host}:{}", cluster.api_port),
        ]);
    }
    print!(
        "{}",
        table(&["NAME", "MASTERS", "WORKERS", "UP", "API"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}
