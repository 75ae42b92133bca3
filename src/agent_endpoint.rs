//! The other end of the node agent's protocol, hosted by nodegate during a run: an HTTP
//! server (on a host loopback port forwarded into the VM, or on the run's bridge inside
//! the run's namespace) that answers registrations and heartbeats the way a provider's
//! control service would, and records every request.
//! The protocol's paths, token and identity field come from the profile.
//!
//! What a guest can make it hold is bounded: a request body larger than
//! [`MAX_BODY_BYTES`] is answered 413 without being read, and the log keeps the last
//! [`MAX_LOG_ENTRIES`] requests (the number dropped is counted and reported).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;

use crate::network::Dialer;

/// The largest request body the endpoint reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How many requests the log keeps (the oldest go first).
pub const MAX_LOG_ENTRIES: usize = 10_000;

/// The request log: the newest entries and how many older ones were dropped.
#[derive(Debug, Default)]
struct Log {
    entries: std::collections::VecDeque<Received>,
    dropped: u64,
}

/// What the endpoint expects.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Registration path (`/v1/register`).
    pub register_path: String,
    /// Heartbeat path (`/v1/heartbeat`).
    pub heartbeat_path: String,
    /// The bearer token the agent must send.
    pub token: String,
    /// The JSON field naming the node (`node_name`).
    pub identity_field: String,
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The path.
    pub path: String,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
    /// The status answered.
    pub status: u16,
    /// The JSON body (`Null` if none or not JSON).
    pub body: Value,
    /// Which incarnation of the endpoint answered (0, then 1 after a restart, ...).
    pub generation: u32,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("agent endpoint on {addr}: {message}")]
pub struct EndpointError {
    /// Where it listens (or was to listen).
    pub addr: SocketAddr,
    /// Why.
    pub message: String,
}

/// A running endpoint; dropping it stops the server thread.
pub struct AgentEndpoint {
    config: EndpointConfig,
    addr: SocketAddr,
    dialer: Dialer,
    log: Arc<Mutex<Log>>,
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
    generation: u32,
}

impl AgentEndpoint {
    /// Starts on 127.0.0.1:`port` (0: a free port) in the host's namespace.
    pub fn start(config: EndpointConfig, port: u16) -> Result<AgentEndpoint, EndpointError> {
        Self::start_at(
            config,
            Dialer::Host,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// Starts on `addr` where `dialer` opens sockets (the run's namespace: the address
    /// the guests are told, on the run's bridge).
    pub fn start_at(
        config: EndpointConfig,
        dialer: Dialer,
        addr: SocketAddr,
    ) -> Result<AgentEndpoint, EndpointError> {
        let mut e = AgentEndpoint {
            config,
            addr,
            dialer,
            log: Arc::new(Mutex::new(Log::default())),
            server: None,
            thread: None,
            generation: 0,
        };
        e.serve()?;
        Ok(e)
    }

    fn serve(&mut self) -> Result<(), EndpointError> {
        let addr = self.addr;
        // After a restart the old listener closes only once its accept thread wakes up:
        // retry the bind for a moment.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let server = loop {
            let bound = self
                .dialer
                .bind(addr)
                .map_err(|e| e.to_string())
                .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(|e| e.to_string()));
            match bound {
                Ok(s) => break Arc::new(s),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(EndpointError {
                        addr: self.addr,
                        message: e,
                    })
                }
            }
        };
        if let Some(a) = server.server_addr().to_ip() {
            self.addr = a;
        }
        let (s, log, config, generation) = (
            server.clone(),
            self.log.clone(),
            self.config.clone(),
            self.generation,
        );
        self.thread = Some(std::thread::spawn(move || {
            // Nodes that registered with this incarnation; a restart forgets them.
            let mut known = BTreeSet::new();
            for mut req in s.incoming_requests() {
                use std::io::Read;
                // Keep at most the limit; skip (a bounded amount of) the rest so the
                // client still reads the refusal.
                let mut bytes = Vec::new();
                let _ = req
                    .as_reader()
                    .take(MAX_BODY_BYTES as u64 + 1)
                    .read_to_end(&mut bytes);
                let too_big = bytes.len() > MAX_BODY_BYTES;
                if too_big {
                    bytes.clear();
                    let _ = std::io::copy(
                        &mut req.as_reader().take(16 * MAX_BODY_BYTES as u64),
                        &mut std::io::sink(),
                    );
                }
                let body: Value = if too_big {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let authorized = req.headers().iter().any(|h| {
                    h.field.equiv("Authorization")
                        && h.value.as_str() == format!("Bearer {}", config.token)
                });
                let path = req.url().split('?').next().unwrap_or("").to_string();
                let id = body[&config.identity_field]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let status = if too_big {
                    413
                } else if *req.method() != tiny_http::Method::Post {
                    405
                } else if !authorized {
                    401
                } else if path == config.register_path && !id.is_empty() {
                    known.insert(id);
                    200
                } else if path == config.heartbeat_path {
                    if known.contains(&id) {
                        200
                    } else {
                        404
                    }
                } else {
                    404
                };
                if let Ok(mut l) = log.lock() {
                    if l.entries.len() >= MAX_LOG_ENTRIES {
                        l.entries.pop_front();
                        l.dropped += 1;
                    }
                    l.entries.push_back(Received {
                        at: Instant::now(),
                        path: path.chars().take(1024).collect(),
                        authorized,
                        status,
                        body,
                        generation,
                    });
                }
                let _ =
                    req.respond(tiny_http::Response::from_string("{}").with_status_code(status));
            }
        }));
        self.server = Some(server);
        Ok(())
    }

    fn halt(&mut self) {
        if let Some(s) = self.server.take() {
            s.unblock();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // tiny_http's accept thread holds the listener until a connection wakes it.
        let _ = self
            .dialer
            .connect(self.addr, std::time::Duration::from_millis(200));
    }

    /// The host port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The requests kept so far, oldest first (at most [`MAX_LOG_ENTRIES`]).
    pub fn requests(&self) -> Vec<Received> {
        self.log
            .lock()
            .map(|l| l.entries.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many old requests the log dropped to stay bounded.
    pub fn dropped(&self) -> u64 {
        self.log.lock().map(|l| l.dropped).unwrap_or(0)
    }

    /// The current incarnation (increases with every restart).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The protocol settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Stops and starts again on the same port, forgetting registered nodes (the log is
    /// kept).
    pub fn restart(&mut self) -> Result<(), EndpointError> {
        self.halt();
        self.generation += 1;
        self.serve()
    }
}

impl Drop for AgentEndpoint {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn post(port: u16, path: &str, token: &str, body: &str) -> u16 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn registration_heartbeats_tokens_and_restarts() {
        let mut e = AgentEndpoint::start(
            EndpointConfig {
                register_path: "/v1/register".into(),
                heartbeat_path: "/v1/heartbeat".into(),
                token: "t".into(),
                identity_field: "node_name".into(),
            },
            0,
        )
        .unwrap();
        let p = e.port();
        let body = r#"{"node_name":"n1"}"#;
        assert_eq!(post(p, "/v1/heartbeat", "t", body), 404, "unknown node");
        assert_eq!(post(p, "/v1/register", "bad", body), 401);
        assert_eq!(post(p, "/v1/register", "t", body), 200);
        assert_eq!(post(p, "/v1/heartbeat", "t", body), 200);
        e.restart().unwrap();
        assert_eq!(e.port(), p);
        assert_eq!(
            post(p, "/v1/heartbeat", "t", body),
            404,
            "a restart forgets nodes"
        );
        let big = format!(
            "{{\"node_name\":\"n1\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_BODY_BYTES)
        );
        assert_eq!(post(p, "/v1/register", "t", &big), 413, "an oversized body");
        let log = e.requests();
        assert_eq!(log.len(), 6);
        assert_eq!(log[5].body, Value::Null);
        assert_eq!(e.dropped(), 0);
        assert_eq!(log[4].generation, 1);
        assert_eq!(log[2].body["node_name"], "n1");
        assert!(!log[1].authorized);
    }
}
