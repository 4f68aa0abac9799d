//! Starting a node: engine, rings, per-core sockets, HTTP listeners — and stopping it on a signal.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sfumato_engine::{Engine, EngineConfig, Mesh, Shutdown};
use sfumato_net::local_addrs::interface_addresses;
use sfumato_net::rtcp_lane::{bind_media_port, Lane, MediaPort};

use crate::config::{ClusterArgs, MediaArgs, NodeArgs};
use crate::core_shell::{CoreLoad, CoreLoads, CoreShell};
use crate::core_state::CoreState;
use crate::messages::{ControlMsg, MediaMsg};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Engine(#[from] sfumato_engine::EngineError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("--webrtc-port {base} + {cores} cores overflows the port range")]
    PortRange { base: u16, cores: usize },
    #[error("HTTP port {addr} is already in use (another sfumato or another program): {source}")]
    HttpPortInUse { addr: SocketAddr, source: std::io::Error },
    #[error("RTMP port {addr} is already in use (another sfumato or another program): {source}")]
    RtmpPortInUse { addr: SocketAddr, source: std::io::Error },
    #[error("a core failed to start; see the log above")]
    CoreFailed,
    #[error("events connector: {0}")]
    Events(std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster_start::ClusterError),
}

/// Ring sizes: control messages are rare; media rings absorb a keyframe burst for one room per core.
const CONTROL_RING: usize = 1024;
const MEDIA_RING: usize = 4096;
/// RTMP's well-known port, used when `--rtmp-port` is not given.
const DEFAULT_RTMP_PORT: u16 = 1935;

pub fn run_standalone(args: NodeArgs) -> Result<(), NodeError> {
    run(args, None)
}

/// `sfumato media`: standalone plus the cluster (`cluster_start.rs`).
pub fn run_media(args: MediaArgs) -> Result<(), NodeError> {
    run(args.node, Some(args.cluster))
}

fn run(args: NodeArgs, cluster: Option<ClusterArgs>) -> Result<(), NodeError> {
    let engine = Engine::new(EngineConfig { cores: args.cores, pin: !args.no_pin, io_memory: args.io_memory })?;
    let cores = engine.cores();
    if args.webrtc_port as usize + cores > u16::MAX as usize {
        return Err(NodeError::PortRange { base: args.webrtc_port, cores });
    }
    let ips = media_ips(&args.webrtc_ips);
    let ice_servers = crate::config::ice_servers(&args)?;
    let http_shared = Arc::new(crate::http_api::HttpShared::new(&ice_servers, cores));
    ensure_http_port_free(SocketAddr::new(args.http_addr, args.http_port))?;
    let rtmp_port = match args.rtmp_port {
        Some(0) => 0,
        Some(port) => {
            ensure_rtmp_port_free(SocketAddr::new(args.http_addr, port))?;
            port
        }
        None => match ensure_rtmp_port_free(SocketAddr::new(args.http_addr, DEFAULT_RTMP_PORT)) {
            Ok(()) => DEFAULT_RTMP_PORT,
            Err(e) => {
                tracing::warn!("{e}; RTMP ingest disabled (set --rtmp-port to choose another port)");
                0
            }
        },
    };
    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers().map_err(NodeError::Signals)?;

    let auth = crate::auth::Authority::new(&args.secret);
    if auth.is_insecure() {
        tracing::warn!(
            "DEV MODE: running with the default secret `insecure` — anyone can publish and watch any room. \
             Set --secret / SFUMATO_SECRET before exposing this node."
        );
    }
    let node_id = args.node_id.clone().unwrap_or_else(crate::events::connector::default_node_id);
    let (events, connector) = crate::events::connector::start(
        &node_id,
        crate::events::connector::ConnectorConfig {
            nats_url: args.nats_url.clone(),
            hook_url: args.hook_url.clone(),
            buffer: args.events_buffer,
        },
    )
    .map_err(NodeError::Events)?;
    let cluster = match &cluster {
        Some(c) => {
            let plan = crate::cluster_start::ClusterPlan::new(&args, c, &node_id, &ips, cores)?;
            plan.bind_check()?;
            Some(Arc::new(plan))
        }
        None => None,
    };
    let cert = str0m::crypto::from_feature_flags().dtls_provider.generate_certificate();
    let control_mesh = Arc::new(Mutex::new(Mesh::<ControlMsg>::new(cores, CONTROL_RING)));
    let media_mesh = Arc::new(Mutex::new(Mesh::<MediaMsg>::new(cores, MEDIA_RING)));
    let loads: CoreLoads = Arc::new((0..cores).map(|_| CoreLoad::default()).collect());
    let failed = Arc::new(AtomicBool::new(false));
    tracing::info!(
        cores,
        http = %SocketAddr::new(args.http_addr, args.http_port),
        webrtc_ports = %format!("{}-{}", args.webrtc_port, args.webrtc_port as usize + cores - 1),
        ips = ?ips,
        public_ips = ?args.public_ip,
        rtmp_port,
        ice_servers = ?ice_servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(),
        mode = if cluster.is_some() { "media" } else { "standalone" },
        "sfumato starting"
    );

    let failed_flag = failed.clone();
    let ran = engine.run(shutdown.clone(), move |ctx| {
        // Taking the ring ends happens once per core at startup; the mutex never touches the data path.
        let control = control_mesh.lock().ok().and_then(|mut m| m.take(ctx.core));
        let media = media_mesh.lock().ok().and_then(|mut m| m.take(ctx.core));
        let cluster = cluster.clone();
        let (args, ips, cert, loads, failed, auth, events, http_shared) = (
            args.clone(),
            ips.clone(),
            cert.clone(),
            loads.clone(),
            failed_flag.clone(),
            auth.clone(),
            events.clone(),
            http_shared.clone(),
        );
        async move {
            let (Some(control), Some(media)) = (control, media) else {
                failed.store(true, Ordering::SeqCst);
                ctx.shutdown.trigger();
                return;
            };
            tracing::debug!(core = ctx.core, "connecting inter-core rings");
            let mut control = control.connect().await;
            let mut media = media.connect().await;
            tracing::debug!(core = ctx.core, "inter-core rings connected");
            let port = args.webrtc_port + ctx.core as u16;
            let mut sockets = Vec::new();
            let mut rtcp_lanes = Vec::new();
            for ip in &ips {
                let addr = SocketAddr::new(*ip, port);
                match bind_media_port(addr, !args.no_rtcp_lane) {
                    Ok(p) => {
                        sockets.push((addr, Rc::new(MediaPort::main_into_glommio(p.main))));
                        match p.lane {
                            Lane::Bound(lane) => rtcp_lanes.push((addr, lane)),
                            Lane::NotWanted => {}
                            Lane::Refused(reason) => tracing::warn!(core = ctx.core, %addr, %reason, "no RTCP lane: every RTCP datagram wakes the core"),
                        }
                    }
                    Err(e) => tracing::warn!(core = ctx.core, %addr, error = %e, "cannot bind WebRTC socket; address skipped"),
                }
            }
            let http_addr = SocketAddr::new(args.http_addr, args.http_port);
            let listener = match crate::http_api::bind(http_addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(core = ctx.core, %http_addr, error = %e, "cannot listen for HTTP");
                    failed.store(true, Ordering::SeqCst);
                    ctx.shutdown.trigger();
                    return;
                }
            };
            let rtmp_listener = if rtmp_port == 0 {
                None
            } else {
                let addr = SocketAddr::new(args.http_addr, rtmp_port);
                match crate::rtmp_ingest::bind(addr) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::error!(core = ctx.core, %addr, error = %e, "cannot listen for RTMP");
                        failed.store(true, Ordering::SeqCst);
                        ctx.shutdown.trigger();
                        return;
                    }
                }
            };
            if sockets.is_empty() {
                tracing::error!(core = ctx.core, port, "no WebRTC socket could be bound");
                failed.store(true, Ordering::SeqCst);
                ctx.shutdown.trigger();
                return;
            }
            // Bound addresses, plus public ones (1:1 NAT): datagrams sent to a public address arrive on a bound
            // socket after the NAT rewrites them, so only the answer needs to carry it.
            let mut candidates: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
            for ip in &args.public_ip {
                let addr = SocketAddr::new(*ip, port);
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
            let mut state = CoreState::new(ctx.core, ctx.cores, candidates, cert, events.clone());
            state.set_rtmp_replace(args.rtmp_replace);
            state.set_rtmp_gop_cache(args.rtmp_gop_cache);
            state.viewer = sfumato_media::webrtc::ViewerOptions { bwe: args.viewer_bwe, direct_send: !args.str0m_send };
            let control_rx = control.take_receivers();
            let media_rx = media.take_receivers();
            let shell = CoreShell::new(state, control, media, sockets, rtcp_lanes, loads.clone(), auth);
            shell.start(control_rx, media_rx);
            let cluster_node = match &cluster {
                Some(plan) => match plan.start_core(&shell, loads.clone()).await {
                    Ok(node) => node,
                    Err(e) => {
                        tracing::error!(core = ctx.core, error = %e, "cluster start failed");
                        failed.store(true, Ordering::SeqCst);
                        ctx.shutdown.trigger();
                        return;
                    }
                },
                None => None,
            };
            let http = glommio::spawn_local(crate::http_api::serve(shell.clone(), http_shared, listener)).detach();
            let rtmp = rtmp_listener.map(|l| glommio::spawn_local(crate::rtmp_ingest::serve(shell.clone(), l)).detach());
            tracing::info!(core = ctx.core, webrtc = ?shell.local_addrs(), "core ready");
            ctx.shutdown.wait().await;
            if let Some(node) = cluster_node {
                node.leave().await;
            }
            http.cancel();
            if let Some(rtmp) = rtmp {
                rtmp.cancel();
            }
            tracing::info!(core = ctx.core, sessions = shell.state.borrow().session_count(), "core stopping");
        }
    });
    // The cores (and with them every EventBus sender) are gone: deliver what is still queued, briefly.
    if let Some(connector) = connector {
        connector.finish(std::time::Duration::from_secs(4));
    }
    ran?;
    if failed.load(Ordering::SeqCst) {
        return Err(NodeError::CoreFailed);
    }
    tracing::info!("sfumato stopped");
    Ok(())
}

/// Every core binds the HTTP port with SO_REUSEPORT, which would also let a second sfumato (same user) join
/// the port silently and take half the requests. Refuse to start if a socket already *listens* on the port.
/// (A probe bind can't tell: the TIME_WAIT connections a previous run leaves behind make any bind without
/// SO_REUSEPORT fail for a minute, so the kernel's table of listening sockets is read instead.)
fn ensure_http_port_free(addr: SocketAddr) -> Result<(), NodeError> {
    if let Some(owner) = listening_socket_on(addr.port()) {
        let source = std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("{owner} is listening on it"));
        return Err(NodeError::HttpPortInUse { addr, source });
    }
    Ok(())
}

/// A TCP socket in LISTEN state on `port` in this network namespace, from /proc/net/tcp and tcp6.
fn listening_socket_on(port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(_slot), Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if state == LISTEN && local_port == Some(port) {
                return Some(format!("a socket ({table}: {local})"));
            }
        }
    }
    None
}

/// Like [`ensure_http_port_free`], for the RTMP port.
fn ensure_rtmp_port_free(addr: SocketAddr) -> Result<(), NodeError> {
    if let Some(owner) = listening_socket_on(addr.port()) {
        let source = std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("{owner} is listening on it"));
        return Err(NodeError::RtmpPortInUse { addr, source });
    }
    Ok(())
}

/// The addresses WebRTC binds and advertises: the configured ones, or loopback plus every interface address.
fn media_ips(configured: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if configured.is_empty() { interface_addresses() } else { configured.to_vec() };
    if configured.is_empty() && !ips.iter().any(|ip| ip.is_loopback() && ip.is_ipv4()) {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips.retain(|ip| !ip.is_unspecified() && !ip.is_multicast());
    ips
}
