//! The other end of the node agent's protocol, hosted by nodegate during a run: an HTTP
//! server on a host loopback port (forwarded into the VM) that answers registrations and
//! heartbeats the way a provider's control service would, and records every request.
//! The protocol's paths, token and identity field come from the profile.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;

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
#[error("agent endpoint on 127.0.0.1:{port}: {message}")]
pub struct EndpointError {
    /// The port.
    pub port: u16,
    /// Why.
    pub message: String,
}

/// A running endpoint; dropping it stops the server thread.
pub struct AgentEndpoint {
    config: EndpointConfig,
    port: u16,
    log: Arc<Mutex<Vec<Received>>>,
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
    generation: u32,
}

impl AgentEndpoint {
    /// Starts on 127.0.0.1:`port` (0: a free port).
    pub fn start(config: EndpointConfig, port: u16) -> Result<AgentEndpoint, EndpointError> {
        let mut e = AgentEndpoint {
            config,
            port,
            log: Arc::new(Mutex::new(Vec::new())),
            server: None,
            thread: None,
            generation: 0,
        };
        e.serve()?;
        Ok(e)
    }

    fn serve(&mut self) -> Result<(), EndpointError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        // After a restart the old listener closes only once its accept thread wakes up:
        // retry the bind for a moment.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let server = loop {
            match tiny_http::Server::http(addr) {
                Ok(s) => break Arc::new(s),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(EndpointError {
                        port: self.port,
                        message: e.to_string(),
                    })
                }
            }
        };
        self.port = server.server_addr().to_ip().map_or(self.port, |a| a.port());
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
                let mut text = String::new();
                let _ = req.as_reader().read_to_string(&mut text);
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let authorized = req.headers().iter().any(|h| {
                    h.field.equiv("Authorization")
                        && h.value.as_str() == format!("Bearer {}", config.token)
                });
                let path = req.url().split('?').next().unwrap_or("").to_string();
                let id = body[&config.identity_field]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let status = if *req.method() != tiny_http::Method::Post {
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
                    l.push(Received {
                        at: Instant::now(),
                        path,
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
        let _ = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            std::time::Duration::from_millis(200),
        );
    }

    /// The host port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
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
        let log = e.requests();
        assert_eq!(log.len(), 5);
        assert_eq!(log[4].generation, 1);
        assert_eq!(log[2].body["node_name"], "n1");
        assert!(!log[1].authorized);
    }
}
