//! A minimal HTTP/1.1 client for plain-HTTP receivers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cariosan_webhooks::BytesBody;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

/// What came back.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<Duration>,
    pub elapsed: Duration,
}

/// POSTs `body` with `headers` to `url` (`http://host:port/path`).
pub async fn post(
    url: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<Answer, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// URLs are supported (put a TLS proxy in front for https)"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {host}:{port} failed: {e}"))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::post(path).header("host", format!("{host}:{port}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(BytesBody::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request to {url} failed: {e}"))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Duration::from_secs);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        retry_after,
        elapsed: started.elapsed(),
    })
}
