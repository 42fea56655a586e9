//! `plumb profile cpu` and `plumb profile diff`.

use super::common;
use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand, ValueEnum};
use plumb_core::filter::FilterArgs;
use plumb_profile::{diff, output, pprof, Profile, ProfileOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Sample kernel and user stacks on every CPU (software CPU clock).
    ///
    /// plumb's own threads (the agent's, for a remote profile) are left
    /// out, in the kernel, and counted as filtered; --include-self keeps
    /// them.
    Cpu(Box<CpuCmd>),
    /// Compare two profiles (folded or pprof): which functions' share of
    /// the samples grew.
    Diff(DiffArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `comm;frame;frame count`, the input of flame graph tools.
    Folded,
    /// An interactive SVG flame graph.
    Svg,
    /// Gzipped pprof protobuf (go tool pprof, Pyroscope, Parca).
    Pprof,
    /// The profile with every stack, as one JSON document.
    Json,
    /// Functions with the most self and total samples.
    Top,
}

#[derive(Debug, Clone)]
pub struct CpuCmd {
    pub filter: FilterArgs,
    pub frequency: u32,
    pub duration: Duration,
    pub kernel: bool,
    pub user: bool,
    pub format: Option<Format>,
    pub file: Option<PathBuf>,
    /// Keep plumb's own threads (the agent's, remotely).
    pub include_self: bool,
}

impl FromArgMatches for CpuCmd {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(CpuCmd {
            filter: common::filter_from(m),
            frequency: *m.get_one::<u32>("frequency").unwrap_or(&99),
            duration: *m
                .get_one::<Duration>("duration")
                .unwrap_or(&Duration::from_secs(10)),
            kernel: !m.get_flag("user-only"),
            user: !m.get_flag("kernel-only"),
            format: m.get_one::<Format>("format").copied(),
            file: m.get_one::<PathBuf>("file").cloned(),
            include_self: m.get_flag("include-self"),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for CpuCmd {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(common::filter_args()).args([
            Arg::new("frequency")
                .short('F')
                .long("frequency")
                .value_name("HZ")
                .value_parser(clap::value_parser!(u32).range(1..))
                .default_value("99")
                .help("Samples per second on each CPU"),
            Arg::new("duration")
                .short('d')
                .long("duration")
                .value_name("TIME")
                .value_parser(common::parse_duration)
                .default_value("10s")
                .help("How long to sample (Ctrl-C ends early and still writes the profile)"),
            Arg::new("kernel-only")
                .long("kernel-only")
                .action(ArgAction::SetTrue)
                .conflicts_with("user-only")
                .help("Only kernel stacks"),
            Arg::new("user-only")
                .long("user-only")
                .action(ArgAction::SetTrue)
                .help("Only user stacks"),
            Arg::new("include-self")
                .long("include-self")
                .action(ArgAction::SetTrue)
                .help("Keep plumb's own threads (remotely, the agent's): left out by default, in the kernel, and counted as filtered"),
            Arg::new("format")
                .short('o')
                .long("format")
                .value_name("FORMAT")
                .value_parser(clap::value_parser!(Format))
                .help("folded, svg, pprof, json or top [default: from --output's extension, else top]"),
            Arg::new("file")
                .long("output")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Write to FILE instead of stdout (svg and pprof always go to a file)"),
        ])
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Whose stacks shape the differential flame graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffShape {
    /// AFTER's stacks: shows what appeared or grew.
    After,
    /// BEFORE's stacks: shows what vanished or shrank.
    Before,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// A differential flame graph: red grew, blue shrank.
    Svg,
    /// The functions whose share grew (and shrank) most.
    Top,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The reference profile: folded stacks, or pprof (gzipped or not).
    pub before: PathBuf,
    /// The profile to compare with it.
    pub after: PathBuf,
    #[arg(short = 'o', long = "format", value_enum, default_value = "top")]
    pub format: DiffFormat,
    /// Write to FILE instead of stdout (an SVG always goes to a file).
    #[arg(long = "output", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Rows of the top table.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// The flame graph's frame widths come from this profile's stacks
    /// (colours always show the change from BEFORE to AFTER).
    #[arg(long, value_enum, default_value = "after")]
    pub shape: DiffShape,
}

pub fn run(cmd: ProfileCmd, verbose: bool) -> anyhow::Result<()> {
    match cmd {
        ProfileCmd::Cpu(c) => cpu(*c, verbose),
        ProfileCmd::Diff(d) => run_diff(d),
    }
}

pub(super) fn format_from_extension(p: &Path) -> Option<Format> {
    let name = p.file_name()?.to_str()?;
    [
        (".svg", Format::Svg),
        (".pb.gz", Format::Pprof),
        (".pprof", Format::Pprof),
        (".pb", Format::Pprof),
        (".json", Format::Json),
        (".folded", Format::Folded),
        (".txt", Format::Top),
    ]
    .into_iter()
    .find(|(ext, _)| name.ends_with(ext))
    .map(|(_, f)| f)
}

/// Profile errors keep plumb-core's exit codes.
fn profile_error(e: plumb_profile::Error) -> anyhow::Error {
    match e {
        plumb_profile::Error::Core(c) => c.into(),
        other => ProfileFailed(other).into(),
    }
}

/// A profiler error that is not one of plumb-core's, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProfileFailed(pub plumb_profile::Error);

pub(super) fn write_out(
    file: Option<&Path>,
    default_name: &str,
    bytes: &[u8],
    binary: bool,
) -> anyhow::Result<()> {
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| binary.then(|| PathBuf::from(default_name)));
    match path {
        Some(path) => {
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
            Ok(())
        }
        None => common::print_stdout(&String::from_utf8_lossy(bytes)),
    }
}

fn cpu(c: CpuCmd, verbose: bool) -> anyhow::Result<()> {
    let format = c
        .format
        .or_else(|| c.file.as_deref().and_then(format_from_extension))
        .unwrap_or(Format::Top);
    let opts = ProfileOptions {
        frequency: c.frequency,
        duration: c.duration,
        filter: c.filter.clone(),
        kernel: c.kernel,
        user: c.user,
        sources: super::trace::local_sources(),
        include_self: c.include_self,
    };
    let stop = common::stop_on_signals()?;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |p: &plumb_profile::Progress| {
        if tty {
            eprint!(
                "\rplumb: profiling {:.0}s of {:.0}s, {} samples   ",
                p.elapsed.as_secs_f64(),
                p.duration.as_secs_f64(),
                p.samples
            );
        }
    };
    let profile =
        plumb_profile::profile_with_progress(&opts, &stop, &mut progress).map_err(profile_error)?;
    if tty {
        eprint!("\r{:60}\r", "");
    }
    let stamp = humantime::format_rfc3339_seconds(profile.started)
        .to_string()
        .replace(':', "-");
    let base = format!("plumb-profile-{}-{stamp}", profile.node);
    match format {
        Format::Folded => write_out(
            c.file.as_deref(),
            &format!("{base}.folded"),
            profile.folded().as_bytes(),
            false,
        )?,
        Format::Json => write_out(
            c.file.as_deref(),
            &format!("{base}.json"),
            format!("{}\n", output::json(&profile).map_err(profile_error)?).as_bytes(),
            false,
        )?,
        Format::Top => {
            let rows = output::top(&profile);
            write_out(
                c.file.as_deref(),
                &format!("{base}.txt"),
                output::top_table(&rows, 25).as_bytes(),
                false,
            )?
        }
        Format::Svg => {
            let title = format!(
                "plumb profile cpu on {} ({} Hz)",
                profile.node, profile.frequency_hz
            );
            let svg = output::svg(&profile, &title).map_err(profile_error)?;
            write_out(c.file.as_deref(), &format!("{base}.svg"), &svg, true)?
        }
        Format::Pprof => write_out(
            c.file.as_deref(),
            &format!("{base}.pb.gz"),
            &pprof::encode_gz(&profile),
            true,
        )?,
    }
    summary(&profile, verbose);
    Ok(())
}

/// The end-of-profile summary on stderr: what the profile holds against
/// what the clocks gave, then how complete its frames are.
pub(super) fn summary(p: &Profile, verbose: bool) {
    for line in summary_lines(p, verbose) {
        eprintln!("{line}");
    }
}

fn summary_lines(p: &Profile, verbose: bool) -> Vec<String> {
    let c = &p.completeness;
    let secs = p.duration_ns as f64 / 1e9;
    let mut lines = vec![format!(
        "plumb: {} samples in the profile, {} lost; {} taken of {} expected ({} Hz x {} CPUs x {:.1}s): \
         {} idle, {} filtered out in the kernel, {} in user space",
        c.samples,
        c.lost + c.missed,
        c.taken(),
        p.expected_samples(),
        p.frequency_hz,
        p.cpus,
        secs,
        c.idle,
        c.filtered_in_kernel,
        c.filtered_in_user_space,
    )];
    let mut frames = format!(
        "plumb: {} of {} sampled frames unsymbolized ({} distinct addresses)",
        c.frames_unsymbolized, c.frames_total, c.addresses_unsymbolized
    );
    if c.stacks_truncated > 0 {
        frames.push_str(&format!(
            ", {} samples with a stack cut at {} frames",
            c.stacks_truncated, p.max_stack_depth
        ));
    }
    let not_recorded = c.kernel_stacks_lost + c.user_stacks_lost;
    if not_recorded > 0 {
        frames.push_str(&format!(", {not_recorded} stacks not recorded"));
    }
    if c.process_notes_lost > 0 {
        frames.push_str(&format!(", {} process notes lost", c.process_notes_lost));
    }
    if c.processes_not_captured > 0 {
        frames.push_str(&format!(
            ", {} processes gone before their mappings were read",
            c.processes_not_captured
        ));
    }
    lines.push(frames);
    if verbose {
        let ids: Vec<String> = p.prog_ids.iter().map(u32::to_string).collect();
        lines.push(format!(
            "plumb: mappings captured for {} processes; BPF program ids {}, detached",
            c.processes_captured,
            ids.join(",")
        ));
    }
    lines
}

fn run_diff(d: DiffArgs) -> anyhow::Result<()> {
    let before = diff::load(&d.before).map_err(profile_error)?;
    let after = diff::load(&d.after).map_err(profile_error)?;
    match d.format {
        DiffFormat::Top => {
            let deltas = diff::compare(&before, &after);
            let text = format!(
                "share of all samples, in percentage points: {} -> {}\n{}",
                d.before.display(),
                d.after.display(),
                diff::table(&deltas, d.limit)
            );
            write_out(
                d.file.as_deref(),
                "plumb-profile-diff.txt",
                text.as_bytes(),
                false,
            )
        }
        DiffFormat::Svg => {
            let title = format!("{} -> {}", d.before.display(), d.after.display());
            let shape = match d.shape {
                DiffShape::After => diff::Shape::After,
                DiffShape::Before => diff::Shape::Before,
            };
            let svg = diff::svg(&before, &after, shape, &title).map_err(profile_error)?;
            write_out(d.file.as_deref(), "plumb-profile-diff.svg", &svg, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_puts_expected_next_to_taken_and_says_what_frames_count() {
        let mut p = plumb_profile::Profile {
            node: "n1".into(),
            frequency_hz: 99,
            started: std::time::UNIX_EPOCH,
            duration_ns: 3_000_000_000,
            symbolize_ns: 0,
            symbolize_cpu_ns: 0,
            cpus: 2,
            max_stack_depth: 127,
            completeness: plumb_profile::Completeness {
                samples: 290,
                lost: 1,
                missed: 2,
                idle: 280,
                filtered_in_kernel: 10,
                filtered_in_user_space: 4,
                stacks_truncated: 5,
                frames_unsymbolized: 12,
                frames_total: 1204,
                addresses_unsymbolized: 3,
                processes_captured: 2,
                ..Default::default()
            },
            stacks: Vec::new(),
            prog_ids: vec![41, 42],
        };
        assert_eq!(
            summary_lines(&p, true),
            [
                "plumb: 290 samples in the profile, 3 lost; 587 taken of 594 expected \
                 (99 Hz x 2 CPUs x 3.0s): 280 idle, 10 filtered out in the kernel, 4 in user space",
                "plumb: 12 of 1204 sampled frames unsymbolized (3 distinct addresses), \
                 5 samples with a stack cut at 127 frames",
                "plumb: mappings captured for 2 processes; BPF program ids 41,42, detached",
            ]
        );
        p.completeness.stacks_truncated = 0;
        assert_eq!(
            summary_lines(&p, false)[1],
            "plumb: 12 of 1204 sampled frames unsymbolized (3 distinct addresses)"
        );
    }
}
