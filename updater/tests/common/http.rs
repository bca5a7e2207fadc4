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
    /// Serve the whole file without a Content-Length, ignoring Range: the body ends when the
    /// connection closes.
    ServeWithoutLength,
    /// Serve the whole file (200, with its length), ignoring Range, as a server without Range
    /// support does.
    IgnoreRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Start of `Range: bytes=N-` or `bytes=N-M`, if the request had one.
    pub range_start: Option<u64>,
    /// `M` of `Range: bytes=N-M` (the last byte asked for), if the range had an end.
    pub range_end: Option<u64>,
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
    let mut range_end = None;
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
            let (start, end) = value.split_once('-').unwrap_or((value, ""));
            range_start = start.parse::<u64>().ok();
            range_end = end.parse::<u64>().ok();
        }
    }
    let index = {
        let mut recorded = recorded.lock().unwrap();
        recorded.push(Request {
            range_start,
            range_end,
            sent: 0,
        });
        recorded.len() - 1
    };
    let action = plan.lock().unwrap().pop_front().unwrap_or(Action::Serve);
    let mut stream = stream;
    if let Action::ServeWithoutLength | Action::IgnoreRange = action {
        range_start = None;
        range_end = None;
    }
    let start = range_start.unwrap_or(0) as usize;
    // One past the last byte served: a range past the end gets what there is.
    let end = range_end.map_or(body.len(), |last| (last as usize + 1).min(body.len()));
    let head = match (&action, range_start) {
        (Action::ServeWithoutLength, _) => {
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
        }
        (Action::Status(status), _) => {
            format!("HTTP/1.1 {status} Planned\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n")
        }
        (_, Some(_)) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            end - 1,
            body.len(),
            end - start
        ),
        (_, None) => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let rest = &body[start.min(end)..end];
    let sent = match action {
        Action::Status(_) => &rest[..0],
        Action::CutAfter(bytes) | Action::StallAfter(bytes) => &rest[..bytes.min(rest.len())],
        Action::Serve | Action::ServeWithoutLength | Action::IgnoreRange => rest,
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
