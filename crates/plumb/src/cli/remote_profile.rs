//! `plumb remote ... profile cpu` (and `kubectl plumb profile cpu`): every
//! node samples at once; the agents send structured stacks and the client
//! merges them into one profile and renders it with plumb-profile's
//! renderers, in every format of the local `plumb profile cpu`. The node
//! is kept: folded stacks and the flame graph put each node at the root
//! (`node;comm;frames`), pprof samples and JSON stacks carry a `node`
//! label, and `top` ranks functions over all nodes.

use super::profile::{self, CpuCmd, Format};
use super::remote::{error_line, others, SomeFailed};
use plumb_agent::client::{self, ClientAuth, Deadlines, Target};
use plumb_agent::proto::{ProfileRequest, StackKinds};
use plumb_profile::{output, pprof, Completeness, Frame, Profile};
use std::sync::Arc;

/// Several nodes' profiles as one, each stack remembering its node.
pub struct Merged {
    pub profile: Profile,
    /// The node of each of `profile.stacks`, by index.
    pub nodes: Vec<Arc<str>>,
    /// Each node's own profile, without its stacks, in arrival order.
    pub parts: Vec<Profile>,
}

pub fn merge(parts: Vec<Profile>) -> Merged {
    let names: Vec<&str> = parts.iter().map(|p| p.node.as_str()).collect();
    let mut m = Profile {
        node: names.join(","),
        frequency_hz: parts.first().map_or(0, |p| p.frequency_hz),
        started: parts
            .iter()
            .map(|p| p.started)
            .min()
            .unwrap_or(std::time::UNIX_EPOCH),
        duration_ns: parts.iter().map(|p| p.duration_ns).max().unwrap_or(0),
        symbolize_ns: parts.iter().map(|p| p.symbolize_ns).max().unwrap_or(0),
        symbolize_cpu_ns: parts.iter().map(|p| p.symbolize_cpu_ns).sum(),
        cpus: parts.iter().map(|p| p.cpus).sum(),
        max_stack_depth: parts.iter().map(|p| p.max_stack_depth).max().unwrap_or(0),
        completeness: Completeness::default(),
        stacks: Vec::new(),
        prog_ids: Vec::new(),
    };
    let mut nodes = Vec::new();
    let mut heads = Vec::new();
    for mut p in parts {
        let c = &mut m.completeness;
        let pc = &p.completeness;
        c.samples += pc.samples;
        c.lost += pc.lost;
        c.missed += pc.missed;
        c.idle += pc.idle;
        c.filtered_in_kernel += pc.filtered_in_kernel;
        c.filtered_in_user_space += pc.filtered_in_user_space;
        c.kernel_stacks_lost += pc.kernel_stacks_lost;
        c.user_stacks_lost += pc.user_stacks_lost;
        c.process_notes_lost += pc.process_notes_lost;
        c.frames_unsymbolized += pc.frames_unsymbolized;
        c.frames_total += pc.frames_total;
        c.stacks_truncated += pc.stacks_truncated;
        c.processes_captured += pc.processes_captured;
        c.processes_not_captured += pc.processes_not_captured;
        c.addresses_unsymbolized += pc.addresses_unsymbolized;
        let node: Arc<str> = Arc::from(p.node.as_str());
        nodes.extend(std::iter::repeat_n(node, p.stacks.len()));
        m.stacks.append(&mut p.stacks);
        m.prog_ids.extend(&p.prog_ids);
        heads.push(p);
    }
    Merged {
        profile: m,
        nodes,
        parts: heads,
    }
}

impl Merged {
    /// The profile with each node as the root frame: the comm becomes the
    /// first frame under it, so folded stacks read `node;comm;frames`.
    fn node_rooted(&self) -> Profile {
        let mut p = self.profile.clone();
        for (s, node) in p.stacks.iter_mut().zip(&self.nodes) {
            let comm = std::mem::replace(&mut s.comm, node.to_string());
            s.frames.insert(
                0,
                Frame {
                    name: Arc::from(comm.as_str()),
                    module: None,
                    kernel: false,
                    symbolized: true,
                },
            );
        }
        p
    }

    pub fn folded(&self) -> String {
        output::folded(&self.node_rooted())
    }

    pub fn svg(&self, title: &str) -> plumb_profile::Result<Vec<u8>> {
        output::svg(&self.node_rooted(), title)
    }

    /// plumb-profile's JSON document, each stack with its `node` and a
    /// `nodes` list of each node's own counts.
    pub fn json(&self) -> anyhow::Result<String> {
        let text = output::json(&self.profile).map_err(profile::ProfileFailed)?;
        let mut v: serde_json::Value = serde_json::from_str(&text)?;
        if let Some(stacks) = v["stacks"].as_array_mut() {
            for (s, node) in stacks.iter_mut().zip(&self.nodes) {
                if let Some(o) = s.as_object_mut() {
                    o.insert("node".into(), node.to_string().into());
                }
            }
        }
        let parts: Vec<serde_json::Value> = self
            .parts
            .iter()
            .map(|p| {
                let mut o = serde_json::to_value(p).unwrap_or_default();
                if let Some(m) = o.as_object_mut() {
                    m.remove("stacks");
                }
                o
            })
            .collect();
        v["nodes"] = parts.into();
        Ok(serde_json::to_string_pretty(&v)?)
    }

    /// Gzipped pprof with a `node` label on every sample.
    pub fn pprof_gz(&self) -> anyhow::Result<Vec<u8>> {
        use prost::Message;
        use std::io::Write;
        let mut pp = pprof::build(&self.profile);
        // plumb-profile writes one sample per stack, in order.
        anyhow::ensure!(
            pp.sample.len() == self.nodes.len(),
            "pprof: {} samples for {} stacks",
            pp.sample.len(),
            self.nodes.len()
        );
        let mut intern = |s: &str| match pp.string_table.iter().position(|x| x == s) {
            Some(i) => i as i64,
            None => {
                pp.string_table.push(s.to_string());
                pp.string_table.len() as i64 - 1
            }
        };
        let key = intern("node");
        let ids: Vec<i64> = self.nodes.iter().map(|n| intern(n)).collect();
        for (s, str) in pp.sample.iter_mut().zip(ids) {
            s.label.push(pprof::Label {
                key,
                str,
                ..Default::default()
            });
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&pp.encode_to_vec())?;
        Ok(gz.finish()?)
    }
}

/// One node's line: what it sampled and how complete that is.
fn node_line(p: &Profile) -> String {
    let c = &p.completeness;
    format!(
        "plumb: node {}: {} samples on {} CPUs in {:.1}s, {} lost, {} of {} frames unsymbolized",
        p.node,
        c.samples,
        p.cpus,
        p.duration_ns as f64 / 1e9,
        c.lost + c.missed,
        c.frames_unsymbolized,
        c.frames_total
    )
}

/// A file name part for the nodes: their names, or how many there are.
fn nodes_tag(m: &Merged) -> String {
    match m.parts.len() {
        0 => "none".into(),
        1..=3 => m
            .parts
            .iter()
            .map(|p| p.node.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        n => format!("{n}-nodes"),
    }
}

pub async fn run(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    c: CpuCmd,
    verbose: bool,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let format = c
        .format
        .or_else(|| c.file.as_deref().and_then(profile::format_from_extension))
        .unwrap_or(Format::Top);
    let req = ProfileRequest {
        duration_ms: c.duration.as_millis() as u64,
        frequency_hz: c.frequency,
        filter_json: serde_json::to_vec(&c.filter)?,
        stacks: match (c.kernel, c.user) {
            (true, false) => StackKinds::KernelOnly,
            (false, true) => StackKinds::UserOnly,
            _ => StackKinds::KernelAndUser,
        } as i32,
        pods: Vec::new(),
        include_self: c.include_self,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let (t, auth, req) = (t.clone(), auth.clone(), req.clone());
        tasks.spawn(async move { (i, client::profile(&t, &auth, d, req).await) });
    }
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let mut parts = Vec::new();
    let mut failed = 0;
    loop {
        let next = tokio::select! {
            n = tasks.join_next() => n,
            _ = int.recv() => return interrupted(tasks).await,
            _ = term.recv() => return interrupted(tasks).await,
        };
        let Some(joined) = next else { break };
        match joined {
            Ok((_, Ok(p))) => {
                eprintln!("{}", node_line(&p));
                parts.push(p);
            }
            Ok((_, Err(e))) => {
                failed += 1;
                eprintln!("plumb: {}{}", error_line(&e), others(targets));
            }
            Err(e) => {
                failed += 1;
                eprintln!("plumb: a profile task failed: {e}");
            }
        }
    }
    if parts.is_empty() {
        return SomeFailed::check(failed.max(1), targets.len());
    }
    // Nodes in a stable order, whatever order they answered in.
    parts.sort_by(|a, b| a.node.cmp(&b.node));
    let m = merge(parts);
    let stamp = humantime::format_rfc3339_seconds(m.profile.started)
        .to_string()
        .replace(':', "-");
    let base = format!("plumb-profile-{}-{stamp}", nodes_tag(&m));
    let file = c.file.as_deref();
    match format {
        Format::Folded => profile::write_out(
            file,
            &format!("{base}.folded"),
            m.folded().as_bytes(),
            false,
        )?,
        Format::Json => profile::write_out(
            file,
            &format!("{base}.json"),
            format!("{}\n", m.json()?).as_bytes(),
            false,
        )?,
        Format::Top => {
            let rows = output::top(&m.profile);
            profile::write_out(
                file,
                &format!("{base}.txt"),
                output::top_table(&rows, 25).as_bytes(),
                false,
            )?
        }
        Format::Svg => {
            let title = format!(
                "plumb profile cpu on {} ({} Hz)",
                m.profile.node, m.profile.frequency_hz
            );
            let svg = m.svg(&title).map_err(profile::ProfileFailed)?;
            profile::write_out(file, &format!("{base}.svg"), &svg, true)?
        }
        Format::Pprof => profile::write_out(file, &format!("{base}.pb.gz"), &m.pprof_gz()?, true)?,
    }
    profile::summary(&m.profile, verbose);
    SomeFailed::check(failed, targets.len())
}

/// Ctrl-C: cancel every call (the agents stop sampling and unload); there
/// is no partial profile to write.
async fn interrupted(
    mut tasks: tokio::task::JoinSet<(usize, plumb_agent::Result<Profile>)>,
) -> anyhow::Result<()> {
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    anyhow::bail!("interrupted: the profile was cancelled on every agent")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_profile::Stack;
    use std::time::{Duration, UNIX_EPOCH};

    fn node(name: &str, comm: &str, leaf: &str, count: u64) -> Profile {
        let f = |n: &str, kernel| Frame {
            name: Arc::from(n),
            module: None,
            kernel,
            symbolized: true,
        };
        Profile {
            node: name.into(),
            frequency_hz: 99,
            started: UNIX_EPOCH + Duration::from_secs(100),
            duration_ns: 2_000_000_000,
            symbolize_ns: 0,
            symbolize_cpu_ns: 0,
            cpus: 2,
            max_stack_depth: 127,
            completeness: Completeness {
                samples: count,
                lost: 1,
                ..Completeness::default()
            },
            stacks: vec![Stack {
                comm: comm.into(),
                pid: 7,
                tid: 7,
                cgroup_id: 1,
                workload: Arc::default(),
                frames: vec![f("main", false), f(leaf, true)],
                count,
            }],
            prog_ids: vec![1],
        }
    }

    fn two() -> Merged {
        merge(vec![
            node("n1", "app", "hot", 30),
            node("n2", "app", "cold", 10),
        ])
    }

    #[test]
    fn folded_stacks_start_with_the_node() {
        let m = two();
        assert_eq!(m.folded(), "n1;app;main;hot 30\nn2;app;main;cold 10\n");
        assert_eq!(m.profile.completeness.samples, 40);
        assert_eq!(m.profile.completeness.lost, 2);
        assert_eq!(m.profile.cpus, 4);
        assert_eq!(nodes_tag(&m), "n1+n2");
        // top ranks functions over all nodes; the comm is not a function.
        let rows = output::top(&m.profile);
        assert_eq!(rows[0].function, "hot");
        assert_eq!(
            rows.iter()
                .find(|r| r.function == "main")
                .unwrap()
                .total_samples,
            40
        );
    }

    /// A node whose two stacks differ only in an unnamed frame's address.
    fn unnamed(name: &str, counts: [u64; 2]) -> Profile {
        let mut p = node(name, "app", "hot", counts[0]);
        let mut second = p.stacks[0].clone();
        second.count = counts[1];
        p.stacks.push(second);
        for (s, addr) in p.stacks.iter_mut().zip(["0x10", "0x11"]) {
            s.frames[0] = Frame {
                name: Arc::from(format!("[unknown]@{addr}")),
                module: None,
                kernel: false,
                symbolized: false,
            };
        }
        p
    }

    #[test]
    fn merged_folded_stacks_keep_stacks_that_differ_only_in_unnamed_addresses_together() {
        let m = merge(vec![unnamed("n1", [3, 4]), unnamed("n2", [5, 6])]);
        assert_eq!(
            m.folded(),
            "n1;app;[unknown];hot 7\nn2;app;[unknown];hot 11\n"
        );
        let svg = String::from_utf8(m.svg("t").unwrap()).unwrap();
        assert!(!svg.contains("@0x"), "{svg}");
        // JSON keeps each address.
        let v: serde_json::Value = serde_json::from_str(&m.json().unwrap()).unwrap();
        let first: Vec<(&str, &str)> = v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["node"].as_str().unwrap(),
                    s["frames"][0]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            first,
            [
                ("n1", "[unknown]@0x10"),
                ("n1", "[unknown]@0x11"),
                ("n2", "[unknown]@0x10"),
                ("n2", "[unknown]@0x11")
            ]
        );
    }

    #[test]
    fn json_stacks_and_pprof_samples_carry_the_node() {
        let m = two();
        let v: serde_json::Value = serde_json::from_str(&m.json().unwrap()).unwrap();
        let nodes: Vec<&str> = v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(v["nodes"][1]["node"], "n2");
        assert_eq!(v["nodes"][1]["samples"], 10);
        assert!(v["nodes"][1].get("stacks").is_none());

        let gz = m.pprof_gz().unwrap();
        let pp = pprof::decode(&gz, std::path::Path::new("t")).unwrap();
        let st = |i: i64| pp.string_table[i as usize].as_str();
        let by_node: Vec<(&str, i64)> = pp
            .sample
            .iter()
            .map(|s| {
                let l = s.label.iter().find(|l| st(l.key) == "node").unwrap();
                (st(l.str), s.value[0])
            })
            .collect();
        assert_eq!(by_node, [("n1", 30), ("n2", 10)]);
    }
}
