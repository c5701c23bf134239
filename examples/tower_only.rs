//! The layer without axum: a plain `tower::service_fn` served by hyper,
//! behind `CariosanWebhookLayer`. The inner service finds the verified,
//! parsed delivery in the request's extensions. Sends itself one signed
//! delivery and one forged one, prints the answers, and exits.
//!
//! ```text
//! cargo run --example tower_only
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use cariosan_webhooks::verify::{sign, Secret};
use cariosan_webhooks::{BytesBody, CariosanWebhookLayer, VerifiedDelivery};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

const SECRET: &str = "whsec_DEMO_ONLY_not_a_real_secret_0000";

async fn handle(
    request: http::Request<BytesBody>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    // Present on every request the layer lets through.
    let delivery = request
        .extensions()
        .get::<VerifiedDelivery>()
        .expect("behind the layer");
    let text = format!(
        "got {} {} (attempt {:?})",
        delivery.event_type(),
        delivery.id(),
        delivery.attempt()
    );
    Ok(http::Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = ServiceBuilder::new()
        .layer(CariosanWebhookLayer::new(SECRET))
        .service(tower::service_fn(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let body: &[u8] = include_bytes!("../src/test_util/fixtures/events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let good = sign(&[Secret::new(SECRET)?], id, now, body);
    let forged = sign(&[Secret::new("whsec_attacker")?], id, now, body);
    for (what, signature) in [("signed", good), ("forged", forged)] {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::post("/")
            .header("host", addr.to_string())
            .header("x-cariosan-delivery", id)
            .header("x-cariosan-event", "webhook.ping")
            .header("x-cariosan-attempt", "1")
            .header("x-cariosan-signature", signature)
            .body(Full::new(Bytes::from_static(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        println!("{what}: {status} {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}
