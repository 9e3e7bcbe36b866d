//! `zos exec` and `zos cp`: sessions in a container workload on a node.

use crate::client::ClientArgs;
use crate::deployments::parse_target;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};
use zos_init::ChunkReader;
use zos_types::api::{CopyDirection, CopyRequest, ExecRequest, StreamIn, StreamOut, WindowSize};

/// Bytes of stdin (or of an archive) per line sent.
const CHUNK: usize = 32 * 1024;

/// `zos exec NAME/WORKLOAD [-i] [-t] -- CMD…`.
#[derive(Args)]
pub struct ExecArgs {
    /// The deployment and the container workload, as NAME/WORKLOAD
    target: String,
    /// Send stdin to the process (without it, the process reads nothing)
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Give the process a terminal the size of yours (stdin must be one); its stdout and
    /// stderr then arrive as one stream
    #[arg(long, short = 't')]
    tty: bool,
    /// Add or replace an environment variable (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container [default: the container's]
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// User (name, uid, user:group or uid:gid) [default: the container's]
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `zos cp SRC DEST`.
#[derive(Args)]
pub struct CpArgs {
    /// Where from: NAME/WORKLOAD:/path in the container, or a local path
    src: String,
    /// Where to: a local path, or NAME/WORKLOAD:/path in the container
    dest: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `zos exec`: the process's stdout and stderr to ours, stdin from ours with `-i`;
/// exits with its exit code.
pub fn exec(args: ExecArgs) -> Result<ExitCode> {
    let (name, workload) = parse_target(&args.target)?;
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            bail!("--env {e:?}: give KEY=VALUE");
        }
    }
    let tty = match args.tty {
        true => Some(Terminal::of_stdin().context(
            "-t needs a terminal on stdin: drop -t, or run zos under one (a shell, tmux, script)",
        )?),
        false => None,
    };
    let request = ExecRequest {
        argv: args.command,
        env: args.env,
        cwd: args.workdir,
        user: args.user,
        stdin: args.interactive,
        tty: tty.as_ref().map(Terminal::size),
    };
    let node = args.client.connect()?;
    let (input, lines) = mpsc::channel();
    if args.interactive {
        let input = input.clone();
        read_stdin(move |chunk| {
            let line = chunk.map_or(StreamIn::StdinEnd, StreamIn::Stdin);
            input.send(line).is_ok()
        });
    }
    if tty.is_some() {
        let input = input.clone();
        watch_resizes(move |size| input.send(StreamIn::Resize(size)).is_ok());
    }
    let _raw = match (&tty, args.interactive) {
        (Some(t), true) => Some(t.raw()?),
        _ => None,
    };
    drop(input);
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let result = node.exec(name, &workload, &request, lines, |out| match out {
        StreamOut::Stdout(data) => stdout.write_all(&data).and_then(|_| stdout.flush()),
        StreamOut::Stderr(data) => stderr.write_all(&data).and_then(|_| stderr.flush()),
        StreamOut::Exit { .. } => Ok(()),
    });
    drop(_raw);
    let (code, error) = result?;
    if let Some(error) = error {
        eprintln!("error: {error}");
    }
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

/// Reads our stdin on a thread of its own, handing each chunk to `send`, then `None` at its
/// end; stops when `send` says the other side is gone.
pub fn read_stdin(mut send: impl FnMut(Option<Vec<u8>>) -> bool + Send + 'static) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(Some(buf[..n].to_vec())) {
                        return;
                    }
                }
            }
        }
        send(None);
    });
}

/// Hands our terminal's size to `send` each time it changes, until `send` says stop.
pub fn watch_resizes(mut send: impl FnMut(WindowSize) -> bool + Send + 'static) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([libc::SIGWINCH]) else {
        return;
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let Ok(t) = Terminal::of_stdin() else { return };
            if !send(t.size()) {
                return;
            }
        }
    });
}

/// Our stdin, a terminal.
pub struct Terminal {
    size: WindowSize,
}

impl Terminal {
    /// Our stdin's terminal and its size; an error when stdin is no terminal.
    pub fn of_stdin() -> std::io::Result<Terminal> {
        // SAFETY: winsize is plain integers; all zeroes is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer; it fails on a non-terminal.
        if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Terminal {
            size: WindowSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            },
        })
    }

    /// Its size.
    pub fn size(&self) -> WindowSize {
        self.size
    }

    /// Raw mode until the guard is dropped: keys go to the remote terminal as typed (^C
    /// included), and it does the echoing.
    pub fn raw(&self) -> Result<RawMode> {
        // SAFETY: termios is plain integers and arrays; all zeroes is a valid value.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes a termios to a valid pointer.
        if unsafe { libc::tcgetattr(0, &mut saved) } < 0 {
            return Err(std::io::Error::last_os_error()).context("reading the terminal's mode");
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw changes the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the termios it is given.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } < 0 {
            return Err(std::io::Error::last_os_error()).context("setting the terminal raw");
        }
        Ok(RawMode { saved })
    }
}

/// Puts the terminal back as it was.
pub struct RawMode {
    saved: libc::termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads the termios saved earlier.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// A `NAME/WORKLOAD:/path` argument.
struct Remote<'a> {
    target: &'a str,
    path: &'a str,
}

/// `NAME/WORKLOAD:/path` if `arg` names a container path: a local path never has a `:`
/// right after its second component (give `./name` for a local file called so).
fn remote(arg: &str) -> Option<Remote<'_>> {
    let (target, path) = arg.split_once(':')?;
    let (name, workload) = target.split_once('/')?;
    (!name.is_empty() && !workload.is_empty() && !workload.contains('/') && !name.starts_with('.'))
        .then_some(Remote { target, path })
}

/// Runs `zos cp`: one side is a container path, the other a local one; archives travel as
/// tar streams.
pub fn cp(args: CpArgs) -> Result<ExitCode> {
    let (code, error) = match (remote(&args.src), remote(&args.dest)) {
        (Some(from), None) => copy_out(&args.client, &from, Path::new(&args.dest))?,
        (None, Some(to)) => copy_in(&args.client, Path::new(&args.src), &to)?,
        _ => bail!(
            "give one container path (NAME/WORKLOAD:/path) and one local path, as in \
             `zos cp app/web:/etc/hosts ./hosts` or `zos cp ./site app/web:/srv`"
        ),
    };
    if let Some(error) = error {
        eprintln!("error: {error}");
    }
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Copies the container's `from` to the local `to`: unpacked next to it first, then moved
/// into place, so a copy that fails half-way leaves nothing.
fn copy_out(client: &ClientArgs, from: &Remote<'_>, to: &Path) -> Result<(i32, Option<String>)> {
    let (name, workload) = parse_target(from.target)?;
    let into = to.is_dir();
    let parent = match into {
        true => to.to_path_buf(),
        false => to
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    if !parent.is_dir() {
        bail!("{}: no such directory to copy into", parent.display());
    }
    let staging = tempfile::Builder::new()
        .prefix(".zos-cp-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a staging directory in {}", parent.display()))?;
    let node = client.connect()?;
    let (bytes, archive) = mpsc::channel::<Vec<u8>>();
    let staged = staging.path().to_path_buf();
    let unpacking =
        std::thread::spawn(move || unpack(ChunkReader::new(move || archive.recv().ok()), &staged));
    let (_no_input, lines) = mpsc::channel();
    let request = CopyRequest {
        path: from.path.to_string(),
        direction: CopyDirection::Out,
    };
    let result = node.copy(name, &workload, &request, lines, |out| {
        if let StreamOut::Stdout(data) = out {
            // The unpacker stopped (a bad archive): its error is the one told.
            let _ = bytes.send(data);
        }
        Ok(())
    });
    drop(bytes);
    let unpacked = unpacking
        .join()
        .map_err(|_| anyhow::anyhow!("the unpacking thread failed"))?;
    let (code, error) = result?;
    if code != 0 {
        return Ok((code, error));
    }
    let top = unpacked?;
    let dest = match into {
        true => to.join(top.file_name().unwrap_or(top.as_os_str())),
        false => to.to_path_buf(),
    };
    std::fs::rename(&top, &dest).with_context(|| {
        format!(
            "moving the copy to {} (a directory there must be removed first)",
            dest.display()
        )
    })?;
    Ok((0, None))
}

/// Unpacks an archive with one top entry into `dir`; returns that entry's path. An entry
/// that would land outside `dir` (`..`, an absolute name, a path through a symlink) is
/// refused: what a guest sends is not trusted.
fn unpack(reader: impl Read, dir: &Path) -> Result<PathBuf> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    let mut top: Option<PathBuf> = None;
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry.path().context("reading the archive")?.into_owned();
        let first = name.components().find(|c| !matches!(c, Component::CurDir));
        let Some(Component::Normal(first)) = first else {
            bail!(
                "the archive has an entry {} outside its top: refused",
                name.display()
            );
        };
        match &top {
            None => top = Some(dir.join(first)),
            Some(t) if t.file_name() != Some(first) => {
                bail!("the archive has more than one top entry: refused")
            }
            Some(_) => {}
        }
        if !entry.unpack_in(dir).context("unpacking the archive")? {
            bail!(
                "the archive's entry {} leads outside it: refused",
                name.display()
            );
        }
    }
    top.context("the archive was empty")
}

/// Copies the local `from` to the container's `to`, as a tar stream.
fn copy_in(client: &ClientArgs, from: &Path, to: &Remote<'_>) -> Result<(i32, Option<String>)> {
    let (name, workload) = parse_target(to.target)?;
    let meta = std::fs::symlink_metadata(from).with_context(|| format!("{}", from.display()))?;
    let top = from
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(PathBuf::from))
        .with_context(|| format!("{}: name a file or directory", from.display()))?;
    let node = client.connect()?;
    let (input, lines) = mpsc::channel();
    let source = from.to_path_buf();
    std::thread::spawn(move || {
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(
            CHUNK,
            ChunkWriter(input.clone()),
        ));
        tar.follow_symlinks(false);
        let packed = match meta.is_dir() {
            true => tar.append_dir_all(&top, &source),
            false => tar.append_path_with_name(&source, &top),
        };
        // A packing error leaves the archive short: the guest's unpacker then fails, and
        // the end of stdin is not sent so nothing half-written is taken as whole.
        if packed.and_then(|_| tar.into_inner()?.flush()).is_ok() {
            let _ = input.send(StreamIn::StdinEnd);
        } else {
            eprintln!("error: reading {}", source.display());
        }
    });
    let request = CopyRequest {
        path: to.path.to_string(),
        direction: CopyDirection::In,
    };
    Ok(node.copy(name, &workload, &request, lines, |_| Ok(()))?)
}

/// Bytes sent as stdin lines.
struct ChunkWriter(Sender<StreamIn>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK);
        self.0
            .send(StreamIn::Stdin(buf[..n].to_vec()))
            .map_err(|_| std::io::Error::other("the session ended"))?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_told_from_local_ones() {
        let r = remote("app/web:/etc/hosts").unwrap();
        assert_eq!((r.target, r.path), ("app/web", "/etc/hosts"));
        assert!(remote("./a/b:c").is_none());
        assert!(remote("hosts").is_none());
        assert!(remote("/tmp/x:y").is_none());
        assert!(remote("a/b/c:d").is_none());
    }

    #[test]
    fn an_archive_leaving_its_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "top/ok", &b"x"[..]).unwrap();
        let mut evil = tar::Header::new_gnu();
        evil.set_size(1);
        evil.set_mode(0o644);
        // `append_data` refuses `..`; the raw name is what a hostile guest could send.
        evil.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"top/../escape");
        evil.set_cksum();
        tar.append(&evil, &b"y"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let err = unpack(&bytes[..], dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
        assert!(!dir.path().join("escape").exists());
    }
}
