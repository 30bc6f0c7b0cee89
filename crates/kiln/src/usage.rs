//! `kiln usage`: print the usage counters of a running node (through its admin API) or of a
//! stopped node's data folder.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use kiln_server::usage::{parse_duration, Counters, UsageFilter, UsageReport, UsageStore};

use crate::admin_client::AdminClient;
use crate::NodeTarget;

#[derive(clap::Args)]
pub struct UsageArgs {
    /// Only this worker's rows.
    #[arg(long, value_name = "NAME")]
    worker: Option<String>,
    /// Only this installed model's rows (the id after alias resolution).
    #[arg(long, value_name = "ID")]
    model: Option<String>,
    /// Only the last DURATION, such as 30m, 24h or 7d, counted in whole UTC hours (so up to
    /// an hour more). Default: all recorded usage.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Output format: table or json.
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "json"])]
    format: String,
    /// The node to read: `--node` and `--token` (any scope), or a stopped node's folder.
    #[command(flatten)]
    target: NodeTarget,
}

pub fn run(args: UsageArgs) -> anyhow::Result<()> {
    let filter = UsageFilter {
        worker: args.worker.clone(),
        model: args.model.clone(),
        since: args.since,
    };
    let report = match &args.target.remote.node {
        Some(node) => {
            let client = AdminClient::new(node, args.target.remote.token.as_deref(), "read", &[])?;
            let since = args.since.map(|since| format!("{}s", since.as_secs()));
            crate::serve::async_runtime()?.block_on(fetch(&client, &filter, since))?
        }
        None => read_local(&args, &filter)?,
    };
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Reads `usage.redb` in the data folder; a folder without one has no usage.
fn read_local(args: &UsageArgs, filter: &UsageFilter) -> anyhow::Result<UsageReport> {
    let config = args.target.paths.load_config()?;
    let data_dir = match &args.target.data_dir {
        Some(dir) => dir.clone(),
        None => config.resolved_data_dir()?,
    };
    let path = data_dir.join(kiln_server::usage::USAGE_FILE);
    let report = match UsageStore::open_existing(&path).map_err(anyhow::Error::msg)? {
        Some(store) => store
            .query(filter, SystemTime::now())
            .map_err(anyhow::Error::msg)?,
        None => UsageReport {
            rows: Vec::new(),
            total: Counters::default(),
        },
    };
    Ok(report)
}

/// Queries `GET /admin/v1/usage` on a running node.
async fn fetch(
    client: &AdminClient,
    filter: &UsageFilter,
    since: Option<String>,
) -> anyhow::Result<UsageReport> {
    let mut query = Vec::new();
    if let Some(worker) = &filter.worker {
        query.push(("worker", worker.clone()));
    }
    if let Some(model) = &filter.model {
        query.push(("model", model.clone()));
    }
    if let Some(since) = since {
        query.push(("since", since));
    }
    let request = client
        .request(reqwest::Method::GET, &["usage"])
        .query(&query);
    let result = client.send_json(request).await?;
    serde_json::from_value(result).context("the node sent an invalid usage report")
}

/// Formats the report as a table with one line per (worker, model) and a total line. The
/// worker `-` stands for runs outside any worker, and the model `-` for a worker's own
/// requests.
fn table(report: &UsageReport) -> String {
    let header = [
        "WORKER",
        "MODEL",
        "REQUESTS",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "IMAGES",
        "COMPUTE_S",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    let name = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.to_owned()
        }
    };
    for row in &report.rows {
        lines.push(cells(name(&row.worker), name(&row.model), &row.counters));
    }
    lines.push(cells("TOTAL".into(), String::new(), &report.total));

    let mut widths = [0usize; 7];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut output = String::new();
    for line in &lines {
        let mut text = String::new();
        for (index, cell) in line.iter().enumerate() {
            let width = widths[index];
            // Names align left and numbers right.
            if index < 2 {
                text.push_str(&format!("{cell:<width$}  "));
            } else {
                text.push_str(&format!("{cell:>width$}  "));
            }
        }
        output.push_str(text.trim_end());
        output.push('\n');
    }
    output
}

fn cells(worker: String, model: String, counters: &Counters) -> [String; 7] {
    [
        worker,
        model,
        counters.requests.to_string(),
        counters.input_tokens.to_string(),
        counters.output_tokens.to_string(),
        counters.images.to_string(),
        format!("{:.3}", counters.compute_seconds),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_server::usage::UsageRow;

    #[test]
    fn table_has_rows_and_total() {
        let counters = Counters {
            requests: 2,
            input_tokens: 30,
            output_tokens: 4,
            images: 0,
            compute_seconds: 1.25,
        };

        let report = UsageReport {
            rows: vec![
                UsageRow {
                    worker: String::new(),
                    model: "m".into(),
                    counters,
                },
                UsageRow {
                    worker: "chat".into(),
                    model: String::new(),
                    counters,
                },
            ],
            total: Counters {
                requests: 4,
                ..counters
            },
        };

        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("WORKER"));

        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(first, ["-", "m", "2", "30", "4", "0", "1.250"]);
        let second: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(second, ["chat", "-", "2", "30", "4", "0", "1.250"]);
        let total: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(total, ["TOTAL", "4", "30", "4", "0", "1.250"]);
    }
}
