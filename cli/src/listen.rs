//! `listen`: a receiver that prints every verified delivery.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use cariosan_webhooks::model::Event;
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, Webhooks};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower_layer::Layer;

use crate::SecretArg;

#[derive(clap::Args)]
pub struct Listen {
    /// Where to listen; any path is accepted.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    #[command(flatten)]
    secret: SecretArg,
}

struct Printer {
    colour: bool,
}

impl Printer {
    fn print(&self, title: &str, body: &str) {
        let (bold, reset) = if self.colour {
            ("\x1b[1;36m", "\x1b[0m")
        } else {
            ("", "")
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{bold}{title}{reset}\n{body}\n");
        let _ = out.flush();
    }
}

fn title<T>(delivery: &Delivery<T>, event_type: &str) -> String {
    let attempt = delivery
        .attempt
        .map_or(String::new(), |a| format!(" attempt {a}"));
    let at = delivery
        .created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| delivery.created_at.to_string());
    format!("{event_type} {}{attempt} at {at}", delivery.id)
}

impl Listen {
    pub async fn run(self) -> Result<ExitCode, String> {
        let printer = Arc::new(Printer {
            colour: std::io::stdout().is_terminal(),
        });
        let (typed, unknown, malformed) = (printer.clone(), printer.clone(), printer);
        let webhooks = Webhooks::new()
            .on_any(move |delivery: Delivery<Event>| {
                let printer = typed.clone();
                async move {
                    let title = title(&delivery, delivery.event_type());
                    let pretty =
                        serde_json::to_string_pretty(&delivery.into_envelope()).unwrap_or_default();
                    printer.print(&title, &pretty);
                    Ok(())
                }
            })
            .on_unknown(move |delivery| {
                let printer = unknown.clone();
                async move {
                    let title = title(&delivery, delivery.event_type());
                    printer.print(
                        &format!("{title} (a type this version does not know)"),
                        delivery.data_json(),
                    );
                    Ok(())
                }
            })
            .on_malformed(move |event| {
                let printer = malformed.clone();
                async move {
                    let title = format!(
                        "{} {} (data does not fit the model: {})",
                        event.event_type(),
                        event.id,
                        event.error()
                    );
                    printer.print(&title, event.data_json());
                    Ok(())
                }
            });
        let (newest, older) = self
            .secret
            .secrets
            .split_first()
            .ok_or("--secret is required")?;
        let mut layer = CariosanWebhookLayer::try_new(newest).map_err(|e| e.to_string())?;
        for secret in older {
            if secret.is_empty() {
                return Err("a --secret is empty".to_owned());
            }
            layer = layer.secret(secret);
        }
        let rejections = Arc::new(Printer {
            colour: std::io::stdout().is_terminal(),
        });
        // Every answer that is not a 2xx is printed too: what a user
        // debugging a sender needs most.
        let service = tower::ServiceBuilder::new()
            .and_then(move |response: http::Response<_>| {
                let printer = rejections.clone();
                async move {
                    let (parts, body) = response.into_parts();
                    let bytes = http_body_util::BodyExt::collect(body)
                        .await
                        .map(|collected| collected.to_bytes())
                        .unwrap_or_default();
                    if !parts.status.is_success() {
                        printer.print(
                            &format!(
                                "rejected: {} {}",
                                parts.status.as_u16(),
                                String::from_utf8_lossy(&bytes)
                            ),
                            "",
                        );
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::from_parts(
                        parts,
                        http_body_util::Full::new(bytes),
                    ))
                }
            })
            .service(layer.layer(webhooks));
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", self.addr))?;
        eprintln!("listening on http://{} (Ctrl-C to stop)", self.addr);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            };
            let Ok((stream, _)) = accepted else { continue };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}
