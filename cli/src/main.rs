//! `cariosan-webhooks`: send signed test deliveries, sign and verify
//! captured ones, and listen for real ones.

mod http_client;
#[cfg(feature = "inbox")]
mod inbox;
mod listen;
mod send;
mod verify;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # fire a signed sample message.created at a local receiver
  cariosan-webhooks send message.created --to http://127.0.0.1:3000/webhooks/cariosan

  # the same, as Cariosan retries: up to 3 attempts, honouring Retry-After
  cariosan-webhooks send message.created --to http://127.0.0.1:3000/webhooks/cariosan --attempts 3

  # sign a body for curl
  cariosan-webhooks sign --delivery evt_1 < body.json

  # why was this captured delivery rejected?
  cariosan-webhooks verify --delivery evt_1 --header 't=1795000000,v1=...' --now 1795000030 < body.json

  # print every verified delivery sent to port 3000
  cariosan-webhooks listen --addr 127.0.0.1:3000

  # the inbox's dead deliveries; one in detail; queue them again after a fix
  DATABASE_URL=postgres://... cariosan-webhooks inbox list --status dead
  cariosan-webhooks inbox show evt_01JDB7Q3KX2W9V0M4T8R6N5P1A
  cariosan-webhooks inbox replay --dead

The secret comes from --secret or CARIOSAN_WEBHOOK_SECRET (which keeps it out of shell history).";

#[derive(Parser)]
#[command(name = "cariosan-webhooks", version, about = "Send, sign, verify and receive Cariosan webhooks", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign a sample (or your) event and POST it to a receiver.
    Send(send::Send),
    /// Sign a body from stdin: print the headers and a curl command line.
    Sign(Sign),
    /// Explain why a captured delivery passes or fails verification.
    Verify(verify::Verify),
    /// Run a receiver that prints every verified delivery.
    Listen(listen::Listen),
    /// List, show, replay and purge the deliveries in a PostgreSQL inbox
    /// (DATABASE_URL).
    #[cfg(feature = "inbox")]
    Inbox(inbox::InboxCommand),
}

/// The signing secrets, from the flag or the environment.
#[derive(clap::Args, Clone)]
pub(crate) struct SecretArg {
    /// The signing secret. Repeat it to sign as a sender does during a
    /// rotation, one `v1=` per secret, newest first (in the environment:
    /// comma-separated).
    #[arg(
        long = "secret",
        env = "CARIOSAN_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        required = true
    )]
    pub(crate) secrets: Vec<String>,
}

#[derive(clap::Args)]
struct Sign {
    #[command(flatten)]
    secret: SecretArg,
    /// The delivery id (X-Cariosan-Delivery); the body's "id" when omitted,
    /// and it must equal it.
    #[arg(long)]
    delivery: Option<String>,
    /// The event type (X-Cariosan-Event); read from the body when omitted.
    #[arg(long)]
    event: Option<String>,
    /// Unix seconds to sign at (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
    /// The URL the curl command posts to.
    #[arg(long, default_value = "http://127.0.0.1:3000/webhooks/cariosan")]
    to: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Send(send) => send.run().await,
            Command::Sign(sign) => sign.run(),
            Command::Verify(verify) => verify.run(),
            Command::Listen(listen) => listen.run().await,
            #[cfg(feature = "inbox")]
            Command::Inbox(inbox) => inbox.run().await,
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

/// One clear line and a non-zero exit.
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the body from stdin: {e}"))?;
    Ok(body)
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Single-quotes a value for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl Sign {
    fn run(self) -> Result<ExitCode, String> {
        let body = read_stdin()?;
        let head = head_of(&body);
        let event_type = match (self.event, &head) {
            (Some(event_type), _) => event_type,
            (None, Some(head)) => head.event_type.clone(),
            (None, None) => return Err("the body has no \"type\": pass --event".to_owned()),
        };
        let delivery_id = match (self.delivery, &head) {
            (Some(id), Some(head)) if id != head.id => {
                return Err(format!(
                    "--delivery {id} differs from the body's id {}: the receiver would answer 400 envelope_mismatch",
                    head.id
                ))
            }
            (Some(id), _) => id,
            (None, Some(head)) => head.id.clone(),
            (None, None) => return Err("the body has no \"id\": pass --delivery".to_owned()),
        };
        let mut delivery =
            cariosan_webhooks::test_util::TestDelivery::bytes(delivery_id, event_type, body)
                .secrets(self.secret.secrets);
        if let Some(timestamp) = self.timestamp {
            delivery = delivery.timestamp(timestamp);
        }
        let headers = delivery.headers();
        let mut curl = format!("curl -sS -X POST {}", shell_quote(&self.to));
        for (name, value) in &headers {
            println!("{name}: {value}");
            curl.push_str(&format!(" -H {}", shell_quote(&format!("{name}: {value}"))));
        }
        curl.push_str(" --data-binary @-");
        println!();
        println!("# with the same body on stdin:");
        println!("{curl}");
        Ok(ExitCode::SUCCESS)
    }
}

/// The `id` and `type` of a JSON envelope.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
}

fn head_of(body: &[u8]) -> Option<Head> {
    serde_json::from_slice(body).ok()
}
