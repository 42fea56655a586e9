//! Command-line interface. Each command lives in its own module; this one
//! holds the top-level parser and error reporting.

mod agent;
mod audit;
mod bpftrace;
mod capture;
mod common;
mod doctor;
mod gadgets;
mod kubectl;
mod profile;
mod profile_hook;
mod remote;
mod remote_bpftrace;
mod remote_capture;
mod remote_profile;
mod run;
mod trace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "plumb",
    version,
    about = "Why is this node slow or losing packets? eBPF tracing and datapath audits.",
    propagate_version = true
)]
pub struct Cli {
    /// Say more: libbpf warnings, the verifier's log on load failures, skipped hooks.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// A container runtime's CRI socket to ask for pod and container names
    /// (repeatable). containerd's, CRI-O's and cri-dockerd's usual sockets
    /// are found without it.
    #[arg(
        long = "runtime-endpoint",
        global = true,
        value_name = "unix:///PATH",
        value_parser = plumb_cri::parse_endpoint
    )]
    pub runtime_endpoints: Vec<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace events on this host with one gadget (plumb gadgets lists them).
    Trace(Box<trace::TraceCmd>),
    /// List every gadget and whether it can run on this kernel.
    Gadgets(gadgets::GadgetsArgs),
    /// Find what is wrong with this node's datapath (netfilter, conntrack, BPF maps, interfaces).
    Audit(audit::AuditArgs),
    /// Answer "why is this node slow or losing packets?" in one report.
    Doctor(doctor::DoctorArgs),
    /// CPU profiles with kernel and user stacks, and differential profiles.
    #[command(subcommand)]
    Profile(profile::ProfileCmd),
    #[command(about = bpftrace::ABOUT, long_about = bpftrace::LONG_ABOUT)]
    Bpftrace(bpftrace::BpftraceCmd),
    /// Load your own BPF object, attach it, and print its maps decoded (columns, JSON, Prometheus).
    #[command(long_about = run::LONG_ABOUT)]
    Run(Box<run::RunCmd>),
    /// Capture packets of a pod, network namespace or interface into pcapng, filtered in the kernel.
    #[command(long_about = capture::LONG_ABOUT)]
    Capture(Box<capture::CaptureCmd>),
    /// Run as the node agent: remote API (token or mTLS) and Prometheus metrics.
    Agent(agent::AgentArgs),
    /// Run a gadget or a CPU profile on many agents at once (--agents
    /// HOST:PORT|unix:PATH,...) and merge the results with a node column; a
    /// failing or hung agent is reported, the others go on.
    Remote(remote::RemoteArgs),
    /// The kubectl plugin (also what runs when invoked as kubectl-plumb).
    #[command(hide = true)]
    KubectlPlugin(kubectl::KubectlArgs),
}

pub fn parse() -> Cli {
    if kubectl::invoked_as_kubectl_plugin() {
        let k = kubectl::KubectlCli::parse();
        return Cli {
            verbose: k.verbose,
            runtime_endpoints: Vec::new(),
            command: Command::KubectlPlugin(k.args),
        };
    }
    Cli::parse()
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    plumb_core::error::show_verifier_log(cli.verbose);
    trace::set_runtime_endpoints(cli.runtime_endpoints);
    match cli.command {
        Command::Trace(t) => trace::run(*t, cli.verbose),
        Command::Gadgets(g) => gadgets::run(g),
        Command::Audit(a) => audit::run(a, cli.verbose),
        Command::Doctor(d) => doctor::run(d),
        Command::Profile(p) => profile::run(p, cli.verbose),
        Command::Bpftrace(b) => bpftrace::run(b, cli.verbose),
        Command::Run(r) => run::run(*r, cli.verbose),
        Command::Capture(c) => capture::run(*c, cli.verbose),
        Command::Agent(a) => agent::run(a),
        Command::Remote(r) => remote::run(r, cli.verbose),
        Command::KubectlPlugin(k) => kubectl::run(k, cli.verbose),
    }
}

/// The error and its causes on one line.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<plumb_core::Error>())
        .map(|e| e.exit_code() as u8)
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<profile::ProfileFailed>())
                .map(|p| p.0.exit_code())
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<plumb_bpftrace::Error>())
                .map(|e| e.exit_code() as u8)
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<run::RunFailed>())
                .map(|r| r.0.exit_code() as u8)
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<bpftrace::Usage>())
                .map(|_| 2)
        })
        .unwrap_or(1)
}
