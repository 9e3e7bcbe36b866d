//! A minimal QMP client: JSON lines over QEMU's monitor socket. Only what the lifecycle needs
//! (status, stop/cont, powerdown, quit); asynchronous events are skipped while waiting for a
//! command's answer.

use crate::{Error, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A connected, negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the socket and leaves capabilities-negotiation mode.
    pub fn connect(socket: &Path) -> Result<Qmp> {
        let what = || format!("connecting to QMP at {}", socket.display());
        let stream = UnixStream::connect(socket).map_err(|e| Error::io(what(), e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| Error::io(what(), e))?;
        let writer = stream.try_clone().map_err(|e| Error::io(what(), e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Process {
                what: what(),
                detail: format!("unexpected greeting {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let line = format!("{request}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("sending QMP {command}"), e))?;
        loop {
            let message = self.read_message()?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = message.get("error") {
                return Err(Error::Process {
                    what: format!("QMP {command}"),
                    detail: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                });
            }
        }
    }

    /// `query-status`'s `status` field: `running`, `paused`, `shutdown`, …
    pub fn status(&mut self) -> Result<String> {
        let ret = self.execute("query-status", None)?;
        Ok(ret
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::io("reading from QMP".into(), e))?;
        if n == 0 {
            return Err(Error::Process {
                what: "QMP".into(),
                detail: "QEMU closed the monitor connection".into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| Error::Process {
            what: "QMP".into(),
            detail: format!("bad message {line:?}: {e}"),
        })
    }
}
