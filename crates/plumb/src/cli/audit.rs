//! `plumb audit`: what is wrong with this node's datapath.

use plumb_audit::{Options, CHECKS};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only these checks (comma-separated): netfilter, conntrack, bpf-maps, datapath, interfaces.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Audit this network namespace (a /run/netns/NAME or /proc/PID/ns/net path) instead of the host's.
    #[arg(long, conflicts_with = "all_netns")]
    pub netns: Option<PathBuf>,
    /// Audit every network namespace on the node, naming the pod that owns each.
    #[arg(long)]
    pub all_netns: bool,
    /// Output format.
    #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

pub fn options(a: &AuditArgs) -> Options {
    Options {
        only: a.only.clone(),
        netns: a.netns.clone(),
        all_netns: a.all_netns,
        sources: super::trace::local_sources(),
        ..Options::default()
    }
}

/// Bad options as the binary reports them: an unknown check is a usage
/// error (exit 2), like any other bad flag value.
pub fn check(opts: &Options) -> anyhow::Result<()> {
    match opts.check() {
        Err(plumb_audit::Error::UnknownCheck(c)) => Err(plumb_core::Error::BadParam {
            param: "only".into(),
            reason: format!("unknown check '{c}'; checks are: {}", CHECKS.join(", ")),
        }
        .into()),
        r => Ok(r?),
    }
}

pub fn run(a: AuditArgs, verbose: bool) -> anyhow::Result<()> {
    let opts = options(&a);
    check(&opts)?;
    plumb_core::preflight::check_capabilities()?;
    let report = plumb_audit::run(&opts)?;
    let text = if a.output == "json" {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        plumb_audit::render(&report, verbose)
    };
    super::common::print_stdout(&text)
}
