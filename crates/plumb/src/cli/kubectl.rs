//! `kubectl plumb`: the `plumb remote` commands, on the nodes that host the
//! selected pods (every node when none is selected), each agent reached
//! through a port-forward to its pod via the API server. Kubernetes does
//! the finding ([`plumb_agent::k8s`]); [`super::remote`] does the rest.

use super::bpftrace::Where;
use super::remote::{self, AuthArgs, DeadlineArgs, RemoteCommand, RemoteProfile};
use anyhow::Context as _;
use clap::Args;
use plumb_agent::client::Target;
use plumb_agent::k8s::{self, AgentPods, Selection};

#[derive(Debug, Args)]
pub struct KubectlArgs {
    /// Only pods with these labels (a label selector: app=web,tier!=db).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", global = true)]
    pub selector: Option<String>,
    /// Only this node (alone: the whole node).
    #[arg(long, value_name = "NODE", global = true)]
    pub node: Option<String>,
    /// Pods of every namespace (with -l), instead of the current one.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The agents' API port inside their pods.
    #[arg(long, value_name = "PORT", default_value_t = 7979, global = true)]
    pub agent_port: u16,
    /// The namespace of the agent pods.
    #[arg(long, value_name = "NS", default_value = k8s::AGENT_NAMESPACE, global = true)]
    pub agent_namespace: String,
    /// The label selector of the agent pods.
    #[arg(long, value_name = "SELECTOR", default_value = k8s::AGENT_SELECTOR, global = true)]
    pub agent_selector: String,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// The plugin's own parser (`kubectl plumb ...`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "kubectl plumb",
    version,
    about = "Run plumb gadgets and profiles on the nodes hosting the selected pods, and merge the results."
)]
pub struct KubectlCli {
    /// Say more (which nodes and agent pods are asked).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// True when this binary runs as the kubectl plugin.
pub fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().ends_with("kubectl-plumb"))
        })
        .unwrap_or(false)
}

pub fn run(a: KubectlArgs, verbose: bool) -> anyhow::Result<()> {
    let auth = a.auth.client_auth()?;
    let mut node = a.node.clone();
    let (namespace, pod) = match &a.command {
        RemoteCommand::Trace(t) => (t.filter.namespace.clone(), t.filter.pod.clone()),
        RemoteCommand::Profile(RemoteProfile::Cpu(c)) => {
            (c.filter.namespace.clone(), c.filter.pod.clone())
        }
        RemoteCommand::Bpftrace(b) => match b.place()? {
            Where::Pod(ns, pod) => (ns, Some(pod)),
            Where::Node(n) => {
                if node.as_ref().is_some_and(|m| *m != n) {
                    anyhow::bail!("node/{n} and --node {} name different nodes", node.unwrap_or_default());
                }
                node = Some(n);
                (None, None)
            }
            Where::Pid(_) => anyhow::bail!(
                "--pid names a process of one host: use plumb bpftrace or plumb remote, or give a pod"
            ),
            Where::Nowhere => (b.namespace.clone(), None),
        },
        RemoteCommand::Capture(c) => (c.namespace.clone(), c.pod.clone()),
        RemoteCommand::Gadgets | RemoteCommand::Logs(_) => (None, None),
    };
    let sel = Selection {
        namespace,
        all_namespaces: a.all_namespaces,
        labels: a.selector.clone(),
        pod,
        node,
    };
    // bpftrace in pods' contexts: one run per selected pod, on its node.
    let per_pod = matches!(a.command, RemoteCommand::Bpftrace(_)) && !sel.whole_nodes();
    // A capture is always of pods: each agent is sent its node's.
    let capture = matches!(a.command, RemoteCommand::Capture(_));
    if capture && sel.whole_nodes() {
        anyhow::bail!(
            "capture needs pods: give -n NS (its pods), -l SELECTOR or --pod NAME; agents never capture a whole node"
        );
    }
    let agents = AgentPods {
        namespace: a.agent_namespace.clone(),
        selector: a.agent_selector.clone(),
    };
    remote::runtime()?.block_on(async move {
        let client = kube::Client::try_default().await.context(
            "cannot reach the Kubernetes API (kubeconfig or in-cluster service account)",
        )?;
        let found = k8s::resolve(&client, &sel, &agents)
            .await
            .context("listing pods")?;
        for n in &found.without_agent {
            eprintln!(
                "plumb: node {n} hosts selected pods but runs no plumb agent (no running pod \
                 matching {} in namespace {})",
                agents.selector, agents.namespace
            );
        }
        if found.targets.is_empty() {
            anyhow::bail!(
                "no node to ask: no running pod matches the selection, or no agent pod matches \
                 {} in namespace {}",
                agents.selector,
                agents.namespace
            );
        }
        // With a label selector, each agent is sent its node's selected
        // pods and keeps only their events.
        let by_labels = sel.labels.is_some() || per_pod || capture;
        let mut targets: Vec<_> = found
            .targets
            .iter()
            .map(|t| k8s::target(client.clone(), &agents, t, a.agent_port, by_labels))
            .collect();
        if per_pod {
            targets = targets
                .into_iter()
                .flat_map(|t| {
                    t.pods
                        .iter()
                        .map(|p| Target {
                            pods: vec![p.clone()],
                            ..t.clone()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        plumb_agent::client::check_tls_names(&targets, &auth)?;
        if verbose {
            for t in &targets {
                eprintln!("plumb: asking {}", t.who);
            }
        }
        match a.command {
            RemoteCommand::Bpftrace(b) => {
                let d = a.deadlines.deadlines();
                super::remote_bpftrace::run(&targets, &auth, d, b, verbose, per_pod).await
            }
            RemoteCommand::Capture(c) => {
                let d = a.deadlines.deadlines();
                super::remote_capture::run(&targets, &auth, d, c, |t| t.pods.clone(), verbose).await
            }
            c => remote::dispatch(&targets, &auth, a.deadlines.deadlines(), c, verbose).await,
        }
    })
}
