//! The metrics endpoint: a small HTTP/1.1 server answering `GET /metrics`, gzip-compressed
//! when the client accepts it (as Prometheus does).

use std::{io::Write as _, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Shared;

/// Longest request head accepted.
const MAX_REQUEST: usize = 8192;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the listener fails; each is served on its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = handle(stream, shared).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_complete =
        |r: &[u8]| r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n");
    while !head_complete(&request) {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        if request.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let shared = shared.clone();
            let gzip = accepts_gzip(&String::from_utf8_lossy(&request));
            let body = tokio::task::spawn_blocking(move || {
                let text = shared.render();
                if gzip {
                    Body::Gzip(compress(text.as_bytes()))
                } else {
                    Body::Plain(text)
                }
            })
            .await
            .unwrap_or_else(|_| Body::Plain(String::new()));
            respond_body(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/") => {
            let page = "<html><body><h1>tracer</h1><p><a href=\"/metrics\">metrics</a></p></body></html>\n";
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", page).await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET\n",
            )
            .await
        }
    }
}

/// A response body, as it goes on the wire.
enum Body {
    Plain(String),
    Gzip(Vec<u8>),
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_body(stream, status, content_type, &Body::Plain(body.to_owned())).await
}

async fn respond_body(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &Body,
) -> std::io::Result<()> {
    let (bytes, encoding) = match body {
        Body::Plain(text) => (text.as_bytes(), ""),
        Body::Gzip(bytes) => (bytes.as_slice(), "Content-Encoding: gzip\r\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{encoding}Vary: Accept-Encoding\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

/// `text` gzip-compressed at the fastest level: exposition text is repetitive enough that it
/// shrinks about twelvefold even so (BENCHMARKS.md: 4.9 MiB to 0.4 MiB at 10 000 threads, for
/// some 8 ms more than the plain scrape).
fn compress(text: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(text)
        .and_then(|()| encoder.finish())
        .expect("compressing into memory")
}

/// Whether a request with head `head` accepts a gzip-compressed body: an `Accept-Encoding`
/// header (any case, possibly repeated) names `gzip` (or `x-gzip`) with a q-value above 0,
/// or, naming neither, `*` with one.
fn accepts_gzip(head: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("accept-encoding") {
            continue;
        }
        for coding in value.split(',') {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f64>().ok());
            // A q-value that does not parse counts as refusal.
            let accepted = q.is_some_and(|q| q > 0.0);
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.unwrap_or(false) || accepted);
            } else if name == "*" {
                any = Some(accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn head(accept: &str) -> String {
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n\r\n")
    }

    #[test]
    fn gzip_is_sent_when_accepted_with_a_positive_q_value() {
        for (header, gzip) in [
            ("Accept-Encoding: gzip", true),
            ("accept-encoding: GZIP", true),
            ("Accept-Encoding: gzip, deflate, br", true),
            ("Accept-Encoding: br;q=1.0, gzip;q=0.5", true),
            ("Accept-Encoding: gzip; q=0.001", true),
            ("Accept-Encoding: x-gzip", true),
            ("Accept-Encoding: *", true),
            ("Accept-Encoding: gzip;q=0", false),
            ("Accept-Encoding: gzip;q=0.000", false),
            ("Accept-Encoding: gzip;q=0, *", false),
            ("Accept-Encoding: *;q=0", false),
            ("Accept-Encoding: deflate, br", false),
            ("Accept-Encoding: identity", false),
            ("Accept-Encoding: gzip;q=nonsense", false),
            ("Accept-Encoding: gzipped", false),
            ("X-Accept-Encoding: gzip", false),
            ("", false),
        ] {
            assert_eq!(accepts_gzip(&head(header)), gzip, "{header:?}");
        }
        // Repeated headers are one list.
        assert!(accepts_gzip(&head(
            "Accept-Encoding: br\r\nAccept-Encoding: gzip"
        )));
        // The request line is no header.
        assert!(!accepts_gzip("GET /accept-encoding:gzip HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn compressed_bodies_decode_to_the_text() {
        let text = "tracer_threads{process=\"p\"} 3\n".repeat(1000);
        let packed = compress(text.as_bytes());
        assert!(packed.len() * 10 < text.len(), "{} bytes", packed.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}
