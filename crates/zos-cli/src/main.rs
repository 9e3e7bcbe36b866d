//! `zos`: the command line of a zos compute node. It makes, inspects and restores flists,
//! runs VMs, runs the node, and deploys to it. Holds no business logic: every command parses
//! its arguments, calls a library crate (or the node's API) and prints the result.

mod client;
mod deploy;
mod deployments;
mod flist;
mod import;
mod key;
mod kube;
mod mount;
mod net;
mod node;
mod output;
mod progress;
mod seal;
mod session;
mod vm;

use clap::{Parser, Subcommand};
use client::ClientArgs;
use std::process::ExitCode;

/// zos: run containers and VMs on a decentralized compute node.
#[derive(Parser)]
#[command(name = "zos", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make, inspect and restore flists (container images as metadata + content-addressed blocks)
    #[command(subcommand)]
    Flist(flist::FlistCommand),
    /// Run an flist as a micro-VM with its process's stdout and stderr yours, exit with its
    /// exit code (like `docker run --rm`)
    #[command(
        after_help = "Entrypoint, cmd, env, working dir and user come from the image \
config stored by `zos flist import`; flags override them. An flist with /boot/vmlinuz (and no \
image config) boots its own kernel, with the flist as its root and a cloud-init seed disk.\n\
In the foreground the container's stdout and stderr are yours, apart; -i sends your stdin, -t \
gives it a terminal (-it for a shell).\n\
Examples:\n  zos run alpine.fl -- echo hello\n  zos run -it alpine.fl -- sh\n  zos run app.fl --cpus 2 --memory 1G -e MODE=prod -v data:/data"
    )]
    Run {
        #[command(flatten)]
        vm: Box<vm::VmArgs>,
        /// Start in the background, print the VM's name and keep it (see `zos vm`)
        #[arg(long, short = 'd', conflicts_with_all = ["interactive", "tty"])]
        detach: bool,
        #[command(flatten)]
        stdio: vm::RunStdio,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Create, start, stop, pause, resume, inspect and remove VMs one step at a time
    Vm {
        #[command(subcommand)]
        cmd: vm::VmCommand,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Disks that outlive VMs, formatted ext4, mounted with `zos run --volume NAME:/path`
    Volume {
        #[command(subcommand)]
        cmd: vm::VolumeCommand,
        #[command(flatten)]
        place: vm::Place,
    },
    /// Make and show the key that owns your deployments and signs your requests
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Run a node, or ask one who it is and what it can still take
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Create or update a deployment from a YAML (or JSON) file and wait until it runs
    #[command(
        after_help = "Workloads that did not change keep running; changed and new ones \
are (re)created. Exits 1 if a workload ends in error.\n\
A deployment several keys must sign: the owner writes it with --sign-only, each co-signer \
runs `zos sign`, and any of them sends the file with `zos deploy`.\n\
Example:\n  zos deploy app.yaml\n  zos deploy app.yaml --node http://10.0.0.5:8080 --timeout 2m\n  \
zos deploy shared.yaml --sign-only shared.json && zos sign shared.json --key bob.pem && \
zos deploy shared.json"
    )]
    Deploy(deploy::DeployArgs),
    /// Add your signature to a deployment written by `zos deploy --sign-only`
    Sign(deploy::SignArgs),
    /// Seal a value to a node, for a zmachine's secret_env (only that node can open it)
    #[command(
        after_help = "The output is age's ASCII armor, sealed to the node's ed25519 key as an \
ssh-ed25519 recipient: `age -a -R` with the line `zos seal --recipient` prints makes the same. \
The node opens it only to start the machine; `zos get`, the API, events, the node's log and \
database show it sealed.\n\
Example:\n  printf %s \"$TOKEN\" | zos seal --node-id NODE_ID > token.age\n\
and in the deployment file:\n  secret_env:\n    TOKEN: |\n      -----BEGIN AGE ENCRYPTED FILE-----\n      …"
    )]
    Seal(seal::SealArgs),
    /// List your deployments on the node
    Ps {
        /// Also list deleted deployments
        #[arg(long, short = 'a')]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a deployment: its workloads, their settings and state
    Get {
        /// The deployment's name
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a workload's console log
    #[command(after_help = "Example:\n  zos logs app/web -f")]
    Logs(deployments::LogsArgs),
    /// Run a command in a container workload, like `docker exec`
    #[command(
        after_help = "The command runs as the container's process does (its user, \
environment and working directory) unless flags say otherwise; zos exits with its exit code. \
Only the deployment's owner may exec, and only in a running container zmachine (a VM-mode \
machine is reached over SSH).\n\
Examples:\n  zos exec app/web -- cat /etc/os-release\n  zos exec -it app/web -- sh\n  \
tar c site | zos exec -i app/web -- tar x -C /srv"
    )]
    Exec(session::ExecArgs),
    /// Copy files out of or into a container workload, like `docker cp`
    #[command(
        after_help = "One side is NAME/WORKLOAD:/path in the container (absolute, no \
'..'), the other a local path. A directory is copied whole, symlinks as links. Into an \
existing directory the copy goes inside it, under its own name; else it takes the \
destination's name. A copy out is unpacked beside its destination and moved into place at \
the end, so a failed copy leaves nothing behind.\n\
Examples:\n  zos cp app/web:/var/log/app.log .\n  zos cp ./site app/web:/srv/site"
    )]
    Cp(session::CpArgs),
    /// Remove a deployment and everything it runs
    Rm {
        /// The deployment's name
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print what happens to your deployments as it happens, until interrupted
    Events {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wire networks across nodes and join them from your own machine (WireGuard)
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Kubernetes clusters of zmachines (k3s): create, scale, kubeconfig, ls, rm
    #[command(subcommand)]
    Kube(kube::KubeCommand),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`zos flist ls app.fl | head`) instead of panicking on a broken pipe.
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Flist(cmd) => flist::run(cmd),
        Command::Run {
            vm,
            detach,
            stdio,
            place,
        } => vm::run(*vm, place, detach, stdio),
        Command::Vm { cmd, place } => vm::vm(cmd, place),
        Command::Volume { cmd, place } => vm::volume(cmd, place),
        Command::Key(cmd) => key::run(cmd),
        Command::Node(cmd) => node::node(cmd),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Sign(args) => deploy::sign_file(&args),
        Command::Seal(args) => seal::seal(args),
        Command::Ps { all, client } => deployments::ps(all, &client),
        Command::Get { name, client } => deployments::get(&name, &client),
        Command::Logs(args) => deployments::logs(&args),
        Command::Exec(args) => session::exec(args),
        Command::Cp(args) => session::cp(args),
        Command::Rm { name, client } => deployments::rm(&name, &client),
        Command::Events { client } => deployments::events(&client),
        Command::Net(cmd) => net::net(cmd),
        Command::Kube(cmd) => kube::kube(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
