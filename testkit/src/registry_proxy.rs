//! A registry that fails on purpose: a proxy in front of the bed's real
//! registry that answers chosen requests itself (a 500, the answer a
//! registry gives while two pushes race, a refusal) a set number of times,
//! and forwards everything else. Each request gets its own upstream
//! connection and goes out with `Connection: close`, so the answer tells
//! the client to close too: the proxy reads only request heads, never
//! parses a body it forwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Answer `times` requests whose method is `method` and whose path
/// contains `path_contains` with `status` and the JSON `body`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    pub path_contains: &'static str,
    pub status: u16,
    pub body: String,
    pub times: usize,
}

impl Fault {
    /// A manifest upload answered `status` with a registry's error `body`.
    pub fn manifest_put(status: u16, body: &str, times: usize) -> Fault {
        Fault {
            method: "PUT",
            path_contains: "/manifests/",
            status,
            body: body.to_string(),
            times,
        }
    }
}

/// What the bed's registry (distribution 2.8, filesystem storage) answers
/// a manifest whose blob link another push is rewriting at that moment.
pub const RACING_PUSH_ANSWER: &str = r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#;

pub struct RegistryProxy {
    /// `127.0.0.1:port`: plain HTTP, which the daemon allows on loopback.
    pub address: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RegistryProxy {
    /// Listens on a free loopback port, in background threads that live
    /// as long as the test process.
    pub fn start(upstream: &str, faults: Vec<Fault>) -> RegistryProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let address = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(faults));
        let (upstream, log) = (upstream.to_string(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, faults, log) = (upstream.clone(), faults.clone(), log.clone());
                std::thread::spawn(move || serve(client, &upstream, &faults, &log));
            }
        });
        RegistryProxy { address, seen }
    }

    /// Every request so far: `METHOD path -> injected STATUS` or `-> forwarded`.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests of `method` had a path containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(path_contains))
            .count()
    }
}

fn serve(client: TcpStream, upstream: &str, faults: &Mutex<Vec<Fault>>, log: &Mutex<Vec<String>>) {
    // The daemon (and the tool) try HTTPS first: a TLS handshake (0x16)
    // is closed at once, as a plain-HTTP registry's refusal, so they fall
    // back to HTTP without waiting for a timeout.
    let mut first = [0u8];
    if client.peek(&mut first).map_or(true, |n| n == 0) || first[0] == 0x16 {
        let _ = client.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let Some(head) = read_head(&mut reader) else {
        return;
    };
    let mut words = head[0].split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    );
    if let Some(fault) = take_fault(faults, &method, &path) {
        log.lock()
            .unwrap()
            .push(format!("{method} {path} -> injected {}", fault.status));
        answer(reader, client, &head, &fault);
        return;
    }
    log.lock()
        .unwrap()
        .push(format!("{method} {path} -> forwarded"));
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let mut request = String::new();
    for line in head
        .iter()
        .filter(|l| !l.to_lowercase().starts_with("connection:"))
    {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    if server.write_all(request.as_bytes()).is_err() {
        return;
    }
    // The body (if any) goes up as it comes; the answer comes down until
    // the registry closes, as `Connection: close` asked.
    let mut up = server.try_clone().expect("clone");
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut up);
    });
    let mut down = client;
    let _ = std::io::copy(&mut server, &mut down);
    let _ = down.shutdown(std::net::Shutdown::Both);
}

/// The request line and headers, without their line ends.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Some(head);
        }
        head.push(line);
    }
}

fn take_fault(faults: &Mutex<Vec<Fault>>, method: &str, path: &str) -> Option<Fault> {
    let mut faults = faults.lock().unwrap();
    let fault = faults
        .iter_mut()
        .find(|f| f.times > 0 && f.method == method && path.contains(f.path_contains))?;
    fault.times -= 1;
    Some(fault.clone())
}

/// Reads the request's body (by its length: a manifest's is small), so
/// the client is not reset mid-send, then answers and closes.
fn answer(mut reader: BufReader<TcpStream>, mut client: TcpStream, head: &[String], fault: &Fault) {
    let length = head
        .iter()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .unwrap_or(0);
    let _ = std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink());
    let reason = match fault.status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Injected",
    };
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        fault.status,
        fault.body.len(),
        fault.body
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.shutdown(std::net::Shutdown::Both);
}
