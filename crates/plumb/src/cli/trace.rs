//! `plumb trace GADGET`: run one gadget on this host and print its events.
//!
//! The gadget subcommands are generated from the registry, with the common
//! filter and output flags plus each gadget's own parameters.

use super::common::{self, OutputOpts};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use plumb_core::enrich::{runtime::DockerApi, Enricher, MetadataSource};
use plumb_core::filter::FilterArgs;
use plumb_core::gadgets::{self, GadgetDesc, Params, REGISTRY};
use plumb_core::prepare::prepare;
use plumb_core::runner::{self, Control, StopReason};
use plumb_core::sink::{end_line, output, OutputSink};
use std::io::{self, BufWriter};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct TraceCmd {
    /// The gadget asked for; an unknown name is reported by `run`, as one
    /// line with the list of known gadgets.
    pub gadget: Result<&'static GadgetDesc, String>,
    pub filter: FilterArgs,
    pub output: OutputOpts,
    pub params: Params,
}

/// The clap command for one gadget.
pub fn gadget_command(g: &'static GadgetDesc) -> Command {
    let mut cmd = Command::new(g.name)
        .about(g.summary)
        .long_about(format!("{}\n\n{}", g.summary, g.help))
        .args(common::filter_args())
        .args(common::flow_filter_args())
        .args(common::output_args());
    for p in g.params {
        let mut a = Arg::new(p.name)
            .long(p.name)
            .help(p.help)
            .help_heading("Gadget options");
        a = match p.value {
            None => a.action(ArgAction::SetTrue),
            Some(v) => a.value_name(v),
        };
        cmd = cmd.arg(a);
    }
    cmd
}

/// Gadget parameters from parsed flags.
pub fn params_from(g: &GadgetDesc, m: &ArgMatches) -> Params {
    let mut params = Params::default();
    for p in g.params {
        match p.value {
            None if m.get_flag(p.name) => {
                params.0.insert(p.name.to_string(), "true".into());
            }
            Some(_) => {
                if let Some(v) = m.get_one::<String>(p.name) {
                    params.0.insert(p.name.to_string(), v.clone());
                }
            }
            None => {}
        }
    }
    params
}

impl FromArgMatches for TraceCmd {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let Some((name, sub)) = m.subcommand() else {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "a gadget is required\n",
            ));
        };
        let Ok(gadget) = gadgets::find(name) else {
            return Ok(TraceCmd {
                gadget: Err(name.to_string()),
                filter: FilterArgs::default(),
                output: common::output_from(&ArgMatches::default()),
                params: Params::default(),
            });
        };
        Ok(TraceCmd {
            gadget: Ok(gadget),
            filter: common::filter_from(sub),
            output: common::output_from(sub),
            params: params_from(gadget, sub),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for TraceCmd {
    fn augment_args(cmd: Command) -> Command {
        cmd.subcommands(REGISTRY.iter().map(|g| gadget_command(g)))
            .subcommand_required(true)
            .subcommand_value_name("GADGET")
            .allow_external_subcommands(true)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

static RUNTIME_ENDPOINTS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

/// CRI sockets the user named (`--runtime-endpoint`), asked before the
/// well-known ones.
pub fn set_runtime_endpoints(endpoints: Vec<std::path::PathBuf>) {
    let _ = RUNTIME_ENDPOINTS.set(endpoints);
}

/// The CRI sockets of this host: those named with --runtime-endpoint,
/// and the well-known ones that exist.
pub fn runtime_endpoints() -> Vec<std::path::PathBuf> {
    let extra = RUNTIME_ENDPOINTS.get().map(Vec::as_slice).unwrap_or(&[]);
    plumb_cri::CriSource::discover(extra)
        .map(|c| c.endpoints().to_vec())
        .unwrap_or_default()
}

/// Runtime metadata sources found on this host: the CRI runtimes a kubelet
/// uses (containerd, CRI-O, cri-dockerd) and Docker-API sockets (Docker,
/// podman). Built once; every command shares them.
pub fn local_sources() -> Vec<Arc<dyn MetadataSource>> {
    static SOURCES: std::sync::OnceLock<Vec<Arc<dyn MetadataSource>>> = std::sync::OnceLock::new();
    SOURCES
        .get_or_init(|| {
            let mut v: Vec<Arc<dyn MetadataSource>> = Vec::new();
            let extra = RUNTIME_ENDPOINTS.get().map(Vec::as_slice).unwrap_or(&[]);
            if let Some(c) = plumb_cri::CriSource::discover(extra) {
                v.push(Arc::new(c));
            }
            if let Some(d) = DockerApi::discover() {
                v.push(Arc::new(d));
            }
            v
        })
        .clone()
}

pub fn run(cmd: TraceCmd, verbose: bool) -> anyhow::Result<()> {
    let gadget = match cmd.gadget {
        Ok(g) => g,
        Err(name) => return Err(gadgets::find(&name).unwrap_err().into()),
    };
    let sources = local_sources();
    let prepared = prepare(&cmd.filter, Some((gadget, &cmd.params)), &sources)?;
    if verbose {
        for line in prepared.filter.describe_for(gadget) {
            eprintln!("plumb: {line}");
        }
    }
    let opts = prepared.run_options(
        cmd.params.clone(),
        cmd.output.limits(),
        Arc::from(plumb_core::runner::node_name()),
    );
    let mut enricher = Enricher::with_fs(prepared.fs, sources, Enricher::DEFAULT_CAPACITY);
    if let Err(e) = enricher.remember_new_cgroups() {
        if verbose {
            eprintln!("plumb: containers that end before their events are read stay unnamed: {e}");
        }
    }
    let out = BufWriter::with_capacity(64 << 10, io::stdout());
    let mut sink = OutputSink::new(
        output(gadget, &cmd.output.spec(false), &opts.node, out),
        opts.node.clone(),
    );
    let name = gadget.name;
    let control = Control {
        stop: common::stop_on_signals()?,
        on_ready: verbose.then(|| {
            Box::new(move |ids: &[u32]| {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                eprintln!("plumb: {name} attached, BPF program ids {}", ids.join(","));
            }) as runner::OnReady
        }),
    };
    let stats = runner::run(gadget, &opts, &mut enricher, &mut sink, control)?;
    drop(sink);
    if verbose && !stats.skipped.is_empty() {
        eprintln!(
            "plumb: not attached on this kernel: {}",
            stats.skipped.join(", ")
        );
    }
    let mut more = Vec::new();
    if verbose {
        more.push(format!("{} filtered in user space", stats.filtered));
    }
    if stats.malformed > 0 {
        more.push(format!("{} malformed records skipped", stats.malformed));
    }
    for (what, n) in stats.counters.iter().filter(|(_, n)| *n > 0) {
        more.push(format!("{n} {what}"));
    }
    let mut line = end_line(stats.seen, stats.lost, &more);
    if stats.reason == StopReason::SinkClosed {
        line.push_str(" (output closed)");
    }
    eprintln!("{line}");
    Ok(())
}
