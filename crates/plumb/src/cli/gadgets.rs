//! `plumb gadgets`: one line per gadget, and whether it can run here.

use plumb_core::gadgets::{check_availability, Availability, REGISTRY};

#[derive(Debug, clap::Args)]
pub struct GadgetsArgs {
    /// Output format.
    #[arg(short, long, value_parser = ["columns", "json"], default_value = "columns")]
    pub output: String,
}

pub fn run(args: GadgetsArgs) -> anyhow::Result<()> {
    // Tracepoints are listed in tracefs; mount it if we may (as `trace` would).
    let _ = plumb_core::preflight::ensure_tracefs();
    let mut out = String::new();
    if args.output == "columns" {
        out.push_str(&format!(
            "{:<10} {:<13} {}\n",
            "GADGET", "AVAILABLE", "DESCRIPTION"
        ));
    }
    for g in REGISTRY {
        let (available, status, reason) = match check_availability(g) {
            Availability::Yes(notes) if notes.is_empty() => (Some(true), "yes", None),
            // It runs, with limits on this kernel (e.g. no drop reasons).
            Availability::Yes(notes) => (Some(true), "yes", Some(notes.join("; "))),
            Availability::No(why) => (Some(false), "no", Some(why)),
            // Not root: tracefs cannot be read, so nothing is claimed.
            Availability::Unknown(why) => (None, "unknown", Some(why)),
        };
        if args.output == "json" {
            let v = serde_json::json!({
                "name": g.name,
                "summary": g.summary,
                "available": available,
                "reason": reason,
                "params": g.params.iter().map(|p| p.name).collect::<Vec<_>>(),
            });
            out.push_str(&format!("{v}\n"));
        } else {
            let mut line = format!("{:<10} {:<13} {}", g.name, status, g.summary);
            if let Some(why) = reason {
                line.push_str(&format!(" [{why}]"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    super::common::print_stdout(&out)
}
