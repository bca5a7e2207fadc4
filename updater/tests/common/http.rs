//! A loopback HTTP/1.1 server for one file: answers Range requests, and follows a plan that can
//! cut a response after some bytes or answer with an error status, recording every request.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Serve normally.
    Serve,
    /// Send headers for the whole answer, then only this many body bytes, then close.
    CutAfter(usize),
    /// Answer with this status and no body.
    Status(u16),
    /// Send headers for the whole answer, then this many body bytes, then nothing more while
    /// keeping the connection open (for a minute).
    StallAfter(usize),
    /// Serve without a Content-Length: the body ends when the connection closes.
    ServeWithoutLength,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Start of `Range: bytes=N-`, if the request had one.
    pub range_start: Option<u64>,
    /// Body bytes the server wrote to the connection (all were accepted by the socket, so the
    /// client received them or hung up first).
    pub sent: u64,
}

pub struct Server {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serves `body` at `/bundle.rota`; actions are taken one per request, then `Serve`.
    pub fn start(body: Vec<u8>, plan: Vec<Action>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/bundle.rota", listener.local_addr().unwrap());
        let body = Arc::new(body);
        let plan = Arc::new(Mutex::new(VecDeque::from(plan)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (body, plan, recorded) = (body.clone(), plan.clone(), recorded.clone());
                thread::spawn(move || serve(stream, &body, &plan, &recorded));
            }
        });
        Server { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Body bytes sent over all requests.
    pub fn bytes_sent(&self) -> u64 {
        self.requests().iter().map(|request| request.sent).sum()
    }
}

fn serve(
    stream: TcpStream,
    body: &[u8],
    plan: &Mutex<VecDeque<Action>>,
    recorded: &Mutex<Vec<Request>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut range_start = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let lower = trimmed.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range: bytes=") {
            range_start = value
                .split('-')
                .next()
                .and_then(|start| start.parse::<u64>().ok());
        }
    }
    let index = {
        let mut recorded = recorded.lock().unwrap();
        recorded.push(Request {
            range_start,
            sent: 0,
        });
        recorded.len() - 1
    };
    let action = plan.lock().unwrap().pop_front().unwrap_or(Action::Serve);
    let mut stream = stream;
    let start = range_start.unwrap_or(0) as usize;
    let head = match (&action, range_start) {
        (Action::ServeWithoutLength, None) => {
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
        }
        (Action::Status(status), _) => {
            format!("HTTP/1.1 {status} Planned\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n")
        }
        (_, Some(_)) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len() - 1,
            body.len(),
            body.len() - start
        ),
        (_, None) => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let rest = &body[start.min(body.len())..];
    let sent = match action {
        Action::Status(_) => &rest[..0],
        Action::CutAfter(bytes) | Action::StallAfter(bytes) => &rest[..bytes.min(rest.len())],
        Action::Serve | Action::ServeWithoutLength => rest,
    };
    // The client may hang up early (it saw enough or failed): not the server's problem.
    if stream.write_all(sent).is_ok() {
        recorded.lock().unwrap()[index].sent = sent.len() as u64;
    }
    let _ = stream.flush();
    if let Action::StallAfter(_) = action {
        thread::sleep(std::time::Duration::from_secs(60));
    }
    let _ = stream.shutdown(Shutdown::Both);
}
