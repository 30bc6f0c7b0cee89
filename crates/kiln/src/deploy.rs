//! `kiln deploy`, `kiln versions`, `kiln rollback` and `kiln secret`: push workers to a running
//! node and manage their versions and secrets through its admin API.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use kiln_server::Bundle;
use serde_json::{json, Value};

use crate::admin_client::AdminClient;

/// The node that a command talks to.
#[derive(clap::Args)]
pub struct RemoteNode {
    /// URL of the running node, e.g. http://127.0.0.1:8787.
    #[arg(long, env = "KILN_NODE", value_name = "URL")]
    node: String,
    /// Admin API token (from `kiln tokens create`): scope `deploy` for changes, any scope to
    /// list.
    #[arg(long, env = "KILN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl RemoteNode {
    fn client(&self, scope: &str) -> anyhow::Result<AdminClient> {
        AdminClient::new(&self.node, self.token.as_deref(), scope, &["workers"])
    }
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// Worker folder: wrangler.toml (or kiln.toml) and the modules it loads.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    node: RemoteNode,
}

#[derive(clap::Subcommand)]
pub enum VersionsCommand {
    /// List a deployed worker's versions, oldest first; `*` marks the one in service.
    List {
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        node: RemoteNode,
    },
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// Version to put back in service. Default: the one before the version in service.
    #[arg(long, value_name = "VERSION")]
    to: Option<u64>,
    #[command(flatten)]
    node: RemoteNode,
}

#[derive(clap::Args)]
pub struct TailArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// Only requests that succeeded (ok) or failed (error).
    #[arg(long, value_name = "STATUS", value_parser = ["ok", "error"])]
    status: Option<String>,
    /// Share of requests to show, from 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 1.0)]
    sample: f64,
    /// Output: pretty (one line per request and per console line) or json (the node's events).
    #[arg(long, value_name = "FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    format: String,
    #[command(flatten)]
    node: RemoteNode,
}

#[derive(clap::Subcommand)]
pub enum SecretCommand {
    /// Store a secret, read from standard input, and restart the worker with it.
    Put {
        #[arg(value_name = "KEY")]
        key: String,
        #[arg(long, value_name = "NAME")]
        worker: String,
        #[command(flatten)]
        node: RemoteNode,
    },
    /// List the names of a worker's secrets.
    List {
        #[arg(long, value_name = "NAME")]
        worker: String,
        #[command(flatten)]
        node: RemoteNode,
    },
    /// Remove a secret and restart the worker without it.
    Delete {
        #[arg(value_name = "KEY")]
        key: String,
        #[arg(long, value_name = "NAME")]
        worker: String,
        #[command(flatten)]
        node: RemoteNode,
    },
}

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    crate::serve::async_runtime()?.block_on(work)
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bundle = Bundle::from_dir(&args.dir).map_err(anyhow::Error::msg)?;
    let name = kiln_config::WorkerConfig::parse(&bundle.config)
        .map_err(anyhow::Error::msg)?
        .name;
    let bytes: usize = bundle.files.values().map(String::len).sum();
    eprintln!(
        "uploading worker {name}: {} files, {} KiB",
        bundle.files.len(),
        bytes.div_ceil(1024)
    );
    let client = args.node.client("deploy")?;
    let result = block_on(async {
        let request = client.request(reqwest::Method::PUT, &[&name]).json(&bundle);
        client.send_json(request).await
    })?;
    println!(
        "deployed {name} version {} (answers on host {})",
        result["version"]["version"],
        result["host"].as_str().unwrap_or("")
    );
    Ok(())
}

pub fn versions(command: VersionsCommand) -> anyhow::Result<()> {
    let VersionsCommand::List { name, node } = command;
    let client = node.client("read")?;
    let result = block_on(client.json(reqwest::Method::GET, &[&name, "versions"]))?;
    println!(
        "{:<3}{:>8}  {:<22}  {:>6}  SHA256",
        "", "VERSION", "CREATED", "FILES"
    );
    for version in result["versions"].as_array().into_iter().flatten() {
        println!(
            "{:<3}{:>8}  {:<22}  {:>6}  {}",
            if version["active"] == true { "*" } else { "" },
            version["version"].as_u64().unwrap_or_default(),
            version["created_on"].as_str().unwrap_or(""),
            version["files"].as_u64().unwrap_or_default(),
            version["sha256"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = args.node.client("deploy")?;
    let body = match args.to {
        Some(version) => json!({ "version": version }),
        None => json!({}),
    };
    let result = block_on(async {
        let request = client
            .request(reqwest::Method::POST, &[&args.name, "rollback"])
            .json(&body);
        client.send_json(request).await
    })?;
    println!(
        "{} now serves version {}",
        args.name, result["version"]["version"]
    );
    Ok(())
}

pub fn secret(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Put { key, worker, node } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("failed to read the secret's value from standard input")?;
            // A value piped with `echo` ends with one newline that is not part of it.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
            let client = node.client("deploy")?;
            block_on(async {
                let request = client
                    .request(reqwest::Method::PUT, &[&worker, "secrets", &key])
                    .body(value);
                client.send_json(request).await
            })?;
            println!("stored secret {key} of worker {worker}");
        }
        SecretCommand::List { worker, node } => {
            let client = node.client("read")?;
            let result = block_on(client.json(reqwest::Method::GET, &[&worker, "secrets"]))?;
            for name in result["secrets"].as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or_default());
            }
        }
        SecretCommand::Delete { key, worker, node } => {
            let client = node.client("deploy")?;
            let _: Value =
                block_on(client.json(reqwest::Method::DELETE, &[&worker, "secrets", &key]))?;
            println!("deleted secret {key} of worker {worker}");
        }
    }
    Ok(())
}

pub fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = args.node.client("read")?;
    block_on(async {
        let mut query = vec![("sample", args.sample.to_string())];
        if let Some(status) = &args.status {
            query.push(("status", status.clone()));
        }
        let request = client
            .request(reqwest::Method::GET, &[&args.name, "tail"])
            .query(&query);
        let mut response = AdminClient::check(
            request
                .send()
                .await
                .context("the request to the node failed")?,
        )
        .await?;
        let mut buffer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .context("the tail connection failed")?
        {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                print_tail_line(&line, &args.format);
            }
        }
        eprintln!("the node closed the tail");
        Ok(())
    })
}

/// Prints one event of the tail stream.
fn print_tail_line(line: &str, format: &str) {
    use std::io::Write as _;
    let event: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let mut out = std::io::stdout().lock();
    if let Some(worker) = event["connected"].as_str() {
        eprintln!("tailing {worker}; press Ctrl-C to stop");
    } else if let Some(count) = event["dropped"].as_u64() {
        eprintln!("{count} events dropped because this tail read too slowly");
    } else if format == "json" {
        let _ = writeln!(out, "{line}");
    } else {
        let request = &event["event"]["request"];
        let _ = writeln!(
            out,
            "{} {} {} -> {} {} (version {}, request {})",
            event["eventTimestamp"],
            request["method"].as_str().unwrap_or(""),
            request["path"].as_str().unwrap_or(""),
            event["event"]["response"]["status"],
            event["outcome"].as_str().unwrap_or(""),
            event["scriptVersion"]["id"].as_str().unwrap_or("-"),
            event["requestId"].as_str().unwrap_or(""),
        );
        for log in event["logs"].as_array().into_iter().flatten() {
            let message: Vec<String> = log["message"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|part| {
                    part.as_str()
                        .map_or_else(|| part.to_string(), str::to_owned)
                })
                .collect();
            let _ = writeln!(
                out,
                "  ({}) {}",
                log["level"].as_str().unwrap_or("log"),
                message.join(" ")
            );
        }
    }
    let _ = out.flush();
}
