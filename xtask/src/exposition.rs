//! The exposition writers side by side: the daemon's own, the `prometheus` crate's and
//! `prometheus-client`'s, writing one synthetic scrape (`tracer/src/daemon/encoders.rs`,
//! whose test checks that they write the same samples).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::bench::Section;

/// One writer on one host.
struct Row {
    writer: String,
    processes: u32,
    threads: u32,
    median_ns: u64,
    bytes: u64,
}

pub fn run(root: &Path) -> Result<Section> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "tracer",
            "--bin",
            "tracer",
            "exposition_writers_side_by_side",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .context("running the exposition benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the exposition benchmark failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rows = stdout
        .lines()
        // The test harness prints its own words before the first line on the same line.
        .filter_map(|l| l.split_once("EXPOSITION ").map(|(_, figures)| figures))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [writer, processes, threads, median_ns, bytes] = f[..] else {
                bail!("unexpected benchmark line {l:?}");
            };
            Ok(Row {
                writer: writer.to_owned(),
                processes: processes.parse()?,
                threads: threads.parse()?,
                median_ns: median_ns.parse()?,
                bytes: bytes.parse()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        bail!("the exposition benchmark printed no figures:\n{stdout}");
    }
    Ok(Section {
        title: "Exposition writers".into(),
        text: table(&rows),
    })
}

fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "The text of one scrape written by the daemon's own writer, by the `prometheus` crate \
         (0.14, its metric families built from the scrape's values, then `TextEncoder`) and by \
         `prometheus-client` (0.26, a `Collector` encoding straight from the values, no metric \
         objects), from the same synthetic scrape: thread series asleep past \
         `blocked_min_secs` (7 samples each, one more in the CPython process), processes with \
         both histograms. A unit test checks that the three write the same samples, a hostile \
         thread name included. Median of 21 writes each, in one process, one after the other; \
         the daemon's labels are escaped once when a series is made, not at each scrape, and \
         that is not in its time.\n\n\
         | host | writer | text | write (median) | against the daemon's |\n|---|---|---:|---:|---:|\n",
    );
    for row in rows {
        let ours = rows
            .iter()
            .find(|r| {
                r.writer == "tracer" && (r.processes, r.threads) == (row.processes, row.threads)
            })
            .map_or(0, |r| r.median_ns);
        let _ = writeln!(
            text,
            "| {} thread series in {} processes | {} | {:.2} MiB | {:.1} ms | {} |",
            row.threads,
            row.processes,
            if row.writer == "tracer" {
                "the daemon's".to_owned()
            } else {
                format!("`{}`", row.writer)
            },
            row.bytes as f64 / (1 << 20) as f64,
            row.median_ns as f64 / 1e6,
            if ours == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}×", row.median_ns as f64 / ours as f64)
            },
        );
    }
    text
}
