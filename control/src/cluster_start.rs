//! Starting the cluster part of `sfumato media`: what is decided once on the main thread (node identity,
//! advertised addresses, seeds, the cluster rings) and what each core does when it starts (connect its
//! rings; core 0 also binds the QUIC socket and runs the node).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::ConnectedReceiver;
use sfumato_cluster::{LinkConfig, LinkEndpoint, Load, Membership, NodeAddrs, NodeId, NodeInfo};
use sfumato_engine::{CoreLinks, Mesh};

use crate::cluster_msg::{ClusterCtl, ClusterMedia};
use crate::cluster_shell::{ClusterNode, ClusterPort, NodeSetup};
use crate::cluster_view::ClusterShared;
use crate::config::{ClusterArgs, NodeArgs, SeedAddr};
use crate::core_shell::{CoreLoads, CoreShell};
use crate::placement::PlacementPolicy;

/// Cluster rings: control is rare, media carries exported/ingested packets.
const CTL_RING: usize = 1024;
const MEDIA_RING: usize = 4096;
/// How often seed names are resolved again.
const SEED_REFRESH: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--node-id: {0}")]
    NodeId(#[from] sfumato_cluster::InvalidNodeId),
    #[error("cannot bind the QUIC link socket on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cluster link endpoint: {0}")]
    Link(#[from] sfumato_cluster::LinkError),
}

/// Everything the cores need to join the cluster, built before the engine starts.
pub struct ClusterPlan {
    pub shared: Arc<ClusterShared>,
    info: NodeInfo,
    secret: String,
    bind: SocketAddr,
    seeds: Arc<Mutex<Vec<SocketAddr>>>,
    ctl: Mutex<Mesh<ClusterCtl>>,
    media: Mutex<Mesh<ClusterMedia>>,
}

impl ClusterPlan {
    pub fn new(args: &NodeArgs, cluster: &ClusterArgs, node_id: &str, media_ips: &[IpAddr], cores: usize) -> Result<Self, ClusterError> {
        let id = NodeId::new(node_id)?;
        let advertise = cluster
            .advertise_ip
            .or_else(|| (!args.http_addr.is_unspecified()).then_some(args.http_addr))
            .or_else(|| media_ips.iter().copied().find(|ip| !ip.is_loopback() && ip.is_ipv4()))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let info = NodeInfo {
            id: id.clone(),
            incarnation,
            zone: cluster.zone.clone(),
            addrs: NodeAddrs {
                quic: SocketAddr::new(advertise, cluster.quic_port),
                http: SocketAddr::new(advertise, args.http_port),
                media: media_ips.iter().take(16).map(|ip| SocketAddr::new(*ip, args.webrtc_port)).collect(),
            },
            load: Load::default(),
            rooms: Default::default(),
        };
        let policy = PlacementPolicy {
            max_sessions: cluster.max_sessions,
            max_cpu_permille: cluster.max_cpu.saturating_mul(10),
            ..PlacementPolicy::default()
        };
        let seeds = Arc::new(Mutex::new(resolve(&cluster.seeds)));
        spawn_seed_resolver(cluster.seeds.clone(), seeds.clone());
        if args.secret == crate::auth::INSECURE_SECRET {
            tracing::warn!(
                "CLUSTER DEV MODE: the cluster secret is the default `insecure` — ANY node started with the default \
                 can join this cluster, receive its media and place sessions on it. Set --secret / SFUMATO_SECRET \
                 (the same on every node) before running on a shared network."
            );
        }
        tracing::info!(node = %id, zone = %cluster.zone, quic = %info.addrs.quic, seeds = ?cluster.seeds.iter().map(ToString::to_string).collect::<Vec<_>>(), "cluster node");
        Ok(Self {
            shared: Arc::new(ClusterShared::new(id, cluster.zone.clone(), policy)),
            info,
            secret: args.secret.clone(),
            bind: SocketAddr::new(args.http_addr, cluster.quic_port),
            seeds,
            ctl: Mutex::new(Mesh::new(cores, CTL_RING)),
            media: Mutex::new(Mesh::new(cores, MEDIA_RING)),
        })
    }

    /// Binds the QUIC socket (on the main thread, so a taken port fails the start cleanly).
    pub fn bind_check(&self) -> Result<(), ClusterError> {
        std::net::UdpSocket::bind(self.bind).map(drop).map_err(|source| ClusterError::Bind { addr: self.bind, source })
    }

    /// Joins core `core` to the cluster rings; core 0 also starts the node. Every core must call this.
    pub async fn start_core(&self, shell: &Rc<CoreShell>, loads: CoreLoads) -> Result<Option<Rc<ClusterNode>>, ClusterError> {
        let core = shell.core();
        let ctl = self.ctl.lock().ok().and_then(|mut m| m.take(core));
        let media = self.media.lock().ok().and_then(|mut m| m.take(core));
        let (Some(ctl), Some(media)) = (ctl, media) else {
            return Ok(None);
        };
        let mut ctl: CoreLinks<ClusterCtl> = ctl.connect().await;
        let mut media: CoreLinks<ClusterMedia> = media.connect().await;
        let ctl_rx: Vec<(usize, ConnectedReceiver<ClusterCtl>)> = ctl.take_receivers();
        let media_rx = media.take_receivers();
        let port = ClusterPort::new(shell.clone(), ctl, media, self.shared.clone());
        port.start(ctl_rx, media_rx);
        if core != 0 {
            // The port lives as long as its tasks (which hold it) do.
            return Ok(None);
        }
        let socket = sfumato_net::udp::bind_udp(self.bind).map_err(|source| ClusterError::Bind { addr: self.bind, source })?;
        set_dont_fragment(&socket, self.bind);
        let link = LinkEndpoint::new(Instant::now(), LinkConfig::new(self.secret.as_bytes().to_vec(), self.info.hello()))?;
        let seeds = match self.seeds.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let membership = Membership::new(self.info.clone(), seeds);
        let node = ClusterNode::start(&port, NodeSetup { socket, link, membership, loads, seeds: self.seeds.clone() });
        tracing::info!(quic = %self.bind, "cluster links listening");
        Ok(Some(node))
    }
}

/// QUIC path MTU discovery needs datagrams that are never fragmented.
fn set_dont_fragment(socket: &glommio::net::UdpSocket, addr: SocketAddr) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let (level, name, value) = if addr.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    };
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid c_int.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot set IP_PMTUDISC_DO on the QUIC socket");
    }
}

fn resolve(seeds: &[SeedAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in seeds {
        match (s.host.as_str(), s.port).to_socket_addrs() {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(seed = %s, error = %e, "cannot resolve seed (retrying)"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Re-resolves seed names in the background (DNS answers change as pods come and go).
fn spawn_seed_resolver(seeds: Vec<SeedAddr>, out: Arc<Mutex<Vec<SocketAddr>>>) {
    if seeds.iter().all(|s| s.host.parse::<IpAddr>().is_ok()) {
        return;
    }
    let spawned = std::thread::Builder::new().name("sfumato-seeds".into()).spawn(move || loop {
        std::thread::sleep(SEED_REFRESH);
        let addrs = resolve(&seeds);
        if let Ok(mut o) = out.lock() {
            *o = addrs;
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "seed resolver thread not started; seeds resolved once");
    }
}
