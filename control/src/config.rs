//! Command line and environment configuration.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "sfumato", version, about = "Decentralized ultra-low-latency WebRTC media server (WHIP/WHEP SFU)")]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SFUMATO_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything on one node: WHIP/WHEP HTTP API and WebRTC media on every core.
    Standalone(NodeArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "0.0.0.0", env = "SFUMATO_HTTP_ADDR")]
    pub http_addr: IpAddr,
    /// HTTP API port (every core accepts on it via SO_REUSEPORT).
    #[arg(long, default_value_t = 3000, env = "SFUMATO_HTTP_PORT")]
    pub http_port: u16,
    /// RTMP ingest port (every core accepts on it via SO_REUSEPORT); 0 disables RTMP. Default 1935; when
    /// not given and 1935 is taken, RTMP is disabled with a warning (given explicitly, a taken port is fatal).
    /// Publish to rtmp://host:PORT/live/<stream key>: the room name in dev mode, an `rtmp` token otherwise.
    #[arg(long, env = "SFUMATO_RTMP_PORT")]
    pub rtmp_port: Option<u16>,
    /// First WebRTC UDP port; core i uses this + i.
    #[arg(long, default_value_t = 10000, env = "SFUMATO_WEBRTC_PORT")]
    pub webrtc_port: u16,
    /// IP addresses to receive WebRTC media on and advertise as host candidates (comma-separated).
    /// Default: 127.0.0.1 plus every address of this machine's interfaces.
    #[arg(long, value_delimiter = ',', env = "SFUMATO_WEBRTC_IPS")]
    pub webrtc_ips: Vec<IpAddr>,
    /// Extra addresses to advertise as ICE host candidates (comma-separated), e.g. the public IP of a 1:1 NAT
    /// (cloud VM, Kubernetes node). Traffic to them must reach this machine on the same ports.
    #[arg(long, value_delimiter = ',', env = "SFUMATO_PUBLIC_IP")]
    pub public_ip: Vec<IpAddr>,
    /// Number of cores (executors). Default: every CPU this process may use.
    #[arg(long, env = "SFUMATO_CORES")]
    pub cores: Option<usize>,
    /// Don't pin executors to CPUs.
    #[arg(long, env = "SFUMATO_NO_PIN")]
    pub no_pin: bool,
    /// Cluster secret: signs tokens. The default `insecure` is dev mode (tokens optional); anything else
    /// requires a token for every publish and watch.
    #[arg(long, default_value = crate::auth::INSECURE_SECRET, env = "SFUMATO_SECRET", hide_default_value = false, hide_env_values = true)]
    pub secret: String,
    /// Bytes of io_uring buffer memory per core (locked memory: about 3 × this × cores must fit `ulimit -l`).
    #[arg(long, default_value_t = 1 << 20, env = "SFUMATO_IO_MEMORY")]
    pub io_memory: usize,
    /// Node id carried by every event (default: this machine's host name).
    #[arg(long, env = "SFUMATO_NODE_ID")]
    pub node_id: Option<String>,
    /// Publish session/room events as JSON to NATS subjects `sfumato.events.<kind>`:
    /// nats://[user:pass@]host[:port] (several comma-separated are tried in turn; no TLS).
    #[arg(long, env = "SFUMATO_NATS_URL", value_parser = crate::events::connector::validate_nats_url, hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Also POST every event's JSON to this http:// URL (retried with backoff; no TLS).
    #[arg(long, env = "SFUMATO_HOOK_URL", value_parser = crate::events::connector::validate_hook_url, hide_env_values = true)]
    pub hook_url: Option<String>,
    /// Events each sink (NATS, hook) holds while its destination is unreachable; beyond this the oldest
    /// are dropped and counted.
    #[arg(long, default_value_t = crate::events::connector::DEFAULT_BUFFER, env = "SFUMATO_EVENTS_BUFFER")]
    pub events_buffer: usize,
}

pub fn init_logging(format: &LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,str0m=warn,is=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
