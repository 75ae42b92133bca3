//! A small QMP client: newline-delimited JSON over QEMU's unix socket.
//!
//! Handshake (greeting, `qmp_capabilities`), commands with ids, and asynchronous events
//! (kept in order of arrival for callers that wait for SHUTDOWN, RESET...).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// QMP failures; each names the socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be used.
    #[error("qmp {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// QEMU sent something that is not QMP.
    #[error("qmp {path}: unexpected message: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What arrived.
        message: String,
    },
    /// QEMU answered a command with an error.
    #[error("qmp {path}: {command} failed: {class}: {desc}")]
    Command {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `SHUTDOWN`.
    pub name: String,
    /// Its data.
    pub data: Value,
}

/// A connected QMP session in command mode.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// Events received so far, oldest first.
    pub events: Vec<Event>,
    /// QEMU's version from the greeting, e.g. `7.2.0`.
    pub qemu_version: String,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let io_err = |source| QmpError::Io {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        let mut qmp = Qmp {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: Vec::new(),
            qemu_version: String::new(),
        };
        let greeting = qmp.read_message()?;
        let v = &greeting["QMP"]["version"]["qemu"];
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(&greeting));
        }
        qmp.qemu_version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn protocol(&self, message: &Value) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "QEMU closed the socket"),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            message: line.trim().to_string(),
        })
    }

    /// Runs a command and returns its `return` value. Events that arrive meanwhile are
    /// queued in [`Qmp::events`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json serializes");
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let reply = self.read_message()?;
            if let Some(name) = reply.get("event").and_then(Value::as_str) {
                self.events.push(Event {
                    name: name.to_string(),
                    data: reply.get("data").cloned().unwrap_or(Value::Null),
                });
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(&reply));
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(self.protocol(&reply));
        }
    }

    /// The VM's run state (`running`, `paused`, `shutdown`...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None)?;
        Ok(v["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// Asks the guest to power off (ACPI power button).
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(|_| ())
    }

    /// Ends QEMU at once.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        self.execute("quit", None).map(|_| ())
    }

    /// Sets a NIC's link up or down (cable plugged or cut).
    pub fn set_link(&mut self, device: &str, up: bool) -> Result<(), QmpError> {
        self.execute("set_link", Some(json!({ "name": device, "up": up })))
            .map(|_| ())
    }

    /// Reads one event (or returns a queued one), waiting up to the socket timeout.
    pub fn next_event(&mut self) -> Result<Event, QmpError> {
        if !self.events.is_empty() {
            return Ok(self.events.remove(0));
        }
        loop {
            let msg = self.read_message()?;
            if let Some(name) = msg.get("event").and_then(Value::as_str) {
                return Ok(Event {
                    name: name.to_string(),
                    data: msg.get("data").cloned().unwrap_or(Value::Null),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A QMP peer speaking the protocol as QEMU does, to test the client's framing.
    /// (The real QEMU is exercised by the VM tests.)
    #[test]
    fn handshake_commands_errors_and_events_against_a_protocol_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            writeln!(w, r#"{{"QMP": {{"version": {{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": ""}}, "capabilities": ["oob"]}}}}"#).unwrap();
            let mut line = String::new();
            for reply in [
                r#"{"return": {}, "id": ID}"#,
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NIC_RX_FILTER_CHANGED", "data": {"name": "net0"}}
{"return": {"status": "running", "running": true}, "id": ID}"#,
                r#"{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": ID}"#,
            ] {
                line.clear();
                r.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                writeln!(w, "{}", reply.replace("ID", &v["id"].to_string())).unwrap();
            }
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.qemu_version, "7.2.0");
        assert_eq!(qmp.status().unwrap(), "running");
        assert_eq!(qmp.events.len(), 1);
        assert_eq!(qmp.events[0].name, "NIC_RX_FILTER_CHANGED");
        let err = qmp.set_link("nope", false).unwrap_err().to_string();
        assert!(err.contains("set_link failed: DeviceNotFound"), "{err}");
        server.join().unwrap();
    }
}
