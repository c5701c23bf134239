//! `send`: a realistic signed delivery, and Cariosan's retries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cariosan_webhooks::model::{EventId, WorkspaceId};
use cariosan_webhooks::test_util::{samples, TestDelivery};

use crate::{http_client, read_file, SecretArg};

#[derive(clap::Args)]
pub struct Send {
    /// The event type, e.g. message.created (any type: a known one is sent
    /// as a realistic sample, an unknown one with your --data or an empty
    /// data object).
    event_type: String,
    /// The receiver's URL.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    secret: SecretArg,
    /// A JSON file: a whole envelope (with "id" and "type"), or the "data"
    /// object alone.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The delivery id (default: a new evt_cli_... id).
    #[arg(long)]
    delivery: Option<String>,
    /// Attempts at most, as Cariosan retries: the same delivery id, a fresh
    /// signature and X-Cariosan-Attempt one higher each time, until a 2xx.
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Seconds between attempts, unless Retry-After asks for longer
    /// (Cariosan's own schedule starts at 10 s).
    #[arg(long, default_value_t = 1.0)]
    retry_delay: f64,
}

impl Send {
    pub async fn run(self) -> Result<ExitCode, String> {
        let id = self.delivery.clone().unwrap_or_else(new_id);
        let body = self.body(&id)?;
        let retry_delay = Duration::try_from_secs_f64(self.retry_delay)
            .map_err(|_| "--retry-delay must be a number of seconds".to_owned())?;
        for attempt in 1..=self.attempts.max(1) {
            let delivery = TestDelivery::bytes(&id, &self.event_type, body.clone())
                .secrets(self.secret.secrets.iter().cloned())
                .attempt(attempt);
            let answer =
                match http_client::post(&self.to, &delivery.headers(), body.clone().into()).await {
                    Ok(answer) => answer,
                    // Cariosan retries a refused connection as it does a 5xx.
                    Err(error) if attempt < self.attempts => {
                        println!("{} {id} attempt {attempt} -> {error}", self.event_type);
                        println!("  retrying in {:.1} s", retry_delay.as_secs_f64());
                        tokio::time::sleep(retry_delay).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
            println!(
                "{} {} attempt {attempt} -> {} {} ({:.1} ms)",
                self.event_type,
                id,
                answer.status,
                code_or_hint(answer.status, answer.body.trim()),
                answer.elapsed.as_secs_f64() * 1000.0
            );
            if (200..300).contains(&answer.status) {
                return Ok(ExitCode::SUCCESS);
            }
            if attempt < self.attempts {
                let wait = answer
                    .retry_after
                    .map_or(retry_delay, |after| after.max(retry_delay));
                println!("  retrying in {:.1} s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
        }
        Ok(ExitCode::FAILURE)
    }

    /// The envelope to send, with `id` as its id.
    fn body(&self, id: &str) -> Result<Vec<u8>, String> {
        let mut value: serde_json::Map<String, serde_json::Value> = match &self.data {
            Some(path) => {
                let text = read_file(path)?;
                serde_json::from_slice(&text)
                    .map_err(|e| format!("{} is not a JSON object: {e}", path.display()))?
            }
            None => match samples::of_type(&self.event_type) {
                Some(mut envelope) => {
                    envelope.id = EventId::new(id);
                    return serde_json::to_vec(&envelope).map_err(|e| e.to_string());
                }
                // A type without a sample: an empty data object.
                None => serde_json::Map::new(),
            },
        };
        if !(value.contains_key("id") && value.contains_key("type")) {
            // The data object alone: wrap it in an envelope.
            let data = serde_json::Value::Object(value);
            value = serde_json::Map::new();
            value.insert("created_at".into(), now_rfc3339().into());
            value.insert(
                "workspace_id".into(),
                WorkspaceId::new("ws_cli").as_str().into(),
            );
            value.insert("data".into(), data);
        }
        value.insert("id".into(), id.into());
        value.insert("type".into(), self.event_type.clone().into());
        serde_json::to_vec(&value).map_err(|e| e.to_string())
    }
}

/// The answer's code, or a hint where the answer has none: a receiver's
/// router answered, not the webhook layer.
fn code_or_hint(status: u16, body: &str) -> String {
    match (status, body) {
        (404, "") => {
            "(no code: nothing is mounted at this path; check the path in --to)".to_owned()
        }
        (405, "") => {
            "(no code: the route does not take POST; is the webhook layer on it?)".to_owned()
        }
        (_, "") => "(no code: this answer did not come from the webhook layer)".to_owned(),
        (_, code) => code.to_owned(),
    }
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("evt_cli_{}", hex::encode(bytes))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}
