//! A small blocking HTTP/1.1 client over plain TCP or TLS (keep-alive, raw bytes),
//! self-signed certificates, and the shared async `reqwest` client.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 client connection over any stream (TCP or TLS), keep-alive.
pub struct HttpConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: std::io::Read + std::io::Write> HttpConn<S> {
    pub fn new(stream: S) -> HttpConn<S> {
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads its response; the connection stays open.
    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.send(method, host, path, headers, body)?;
        self.read_response(method == "HEAD")
    }

    /// Sends one request without reading anything (pipelining, or a request sent
    /// while the server is still busy with the previous one).
    pub fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).collect::<Vec<u8>>();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.fill()?;
        }
    }

    /// Reads one response (`head`: to a HEAD request, so without a body).
    pub fn read_response(&mut self, head: bool) -> std::io::Result<HttpResponse> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let status_line = self.line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                let data = self.take(size)?;
                resp.body.extend_from_slice(&data);
                self.take(2)?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
            resp.body = self.take(len)?;
        } else {
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }
}

/// A TCP connection with generous timeouts, so a broken server fails a test instead of
/// hanging it.
pub fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// One request on a fresh plain connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    HttpConn::new(tcp_connect(addr)?).request(method, &addr.to_string(), path, &all, body)
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], &[])
}

/// A self-signed certificate and key made by the `openssl` command (Debian's openssl
/// package), P-256, for the given DNS names (the first is also the CN).
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate in DER, to compare with what a handshake presents.
    pub der: Vec<u8>,
}

pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .arg("-subj")
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(&cert).expect("read the new certificate");
    let der = pingora::tls::x509::X509::from_pem(&pem)
        .and_then(|c| c.to_der())
        .expect("parse the new certificate");
    TestCert { cert, key, der }
}

pub type TlsStream = pingora::tls::ssl::SslStream<TcpStream>;

/// A TLS client handshake that trusts anything (the test compares the certificate
/// itself), sending `sni` when given and offering `alpn` (wire format, e.g.
/// `b"\x02h2\x08http/1.1"`) when given.
pub fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: Option<&[u8]>,
) -> Result<TlsStream, String> {
    use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    if let Some(protos) = alpn {
        b.set_alpn_protos(protos).map_err(|e| e.to_string())?;
    }
    let connector = b.build();
    let tcp = tcp_connect(addr).map_err(|e| e.to_string())?;
    let mut cfg = connector.configure().map_err(|e| e.to_string())?;
    cfg.set_use_server_name_indication(sni.is_some());
    cfg.set_verify_hostname(false);
    cfg.connect(sni.unwrap_or("no-sni.invalid"), tcp)
        .map_err(|e| e.to_string())
}

/// The DER of the certificate the server presented.
pub fn peer_der(s: &TlsStream) -> Vec<u8> {
    s.ssl()
        .peer_certificate()
        .expect("the server presented a certificate")
        .to_der()
        .expect("DER")
}

/// The async client every reqwest-based test uses: redirects are answers to check,
/// not to follow, and a stuck server fails the test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}
