//! Command line, environment and TOML file configuration.
//!
//! Every setting comes from, in order of precedence: the command line, its `SFUMATO_*` environment variable,
//! the `--config` TOML file, the built-in default. File keys are the long flag names without `--`, in
//! kebab-case (`http-port = 3000`); list settings take a TOML array or one comma-separated string. A list from
//! a higher source replaces the lower one, it is never appended to.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

const PRECEDENCE_HELP: &str = "Every flag can also be set by its SFUMATO_* environment variable (shown with each \
flag) or in the --config TOML file, keyed by the flag name without `--` in kebab-case (`http-port = 3000`; lists \
as arrays or comma-separated strings; see docs/sfumato.example.toml). Precedence: command line > environment > \
file > default. An invalid setting stops the server with exit code 2.";

#[derive(Parser, Debug)]
#[command(name = "sfumato", version, about = "Decentralized ultra-low-latency WebRTC media server (WHIP/WHEP SFU)")]
pub struct Cli {
    /// Log output format (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SFUMATO_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything on one node: WHIP/WHEP HTTP API and WebRTC media on every core.
    #[command(after_help = PRECEDENCE_HELP)]
    Standalone(NodeArgs),
    /// A cluster node: everything `standalone` does, plus QUIC links to the other nodes (--seeds), gossip
    /// membership, cascading of rooms published elsewhere, and gateway placement of WHIP/WHEP sessions.
    #[command(after_help = PRECEDENCE_HELP)]
    Media(MediaArgs),
}

/// `sfumato media`: the node settings plus the cluster ones.
#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Cluster settings (`sfumato media` only; `standalone` ignores these keys in a config file).
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// QUIC link addresses of nodes to join through, host:port (comma-separated). DNS names are resolved
    /// again every 15 s (a headless Service lists every pod). Seeds are only a bootstrap: none is special,
    /// and an empty list starts a new cluster.
    #[arg(long, value_delimiter = ',', env = "SFUMATO_SEEDS")]
    pub seeds: Vec<SeedAddr>,
    /// This node's zone (placement keeps clients in their zone: the gateway's own, or an X-Sfumato-Zone header).
    /// 1-64 characters of A-Z a-z 0-9 - _ .
    #[arg(long, default_value = "default", value_parser = parse_zone, env = "SFUMATO_ZONE")]
    pub zone: String,
    /// UDP port of the QUIC links between nodes (bound on --http-addr).
    #[arg(long, default_value_t = 4433, env = "SFUMATO_QUIC_PORT")]
    pub quic_port: u16,
    /// The IP other nodes dial for this node's QUIC link and HTTP API. Default: the first non-loopback
    /// address of --webrtc-ips or of this machine, else 127.0.0.1.
    #[arg(long, env = "SFUMATO_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// A node with this many sessions gets no new ones from placement (0: no limit).
    #[arg(long, default_value_t = 0, env = "SFUMATO_MAX_SESSIONS")]
    pub max_sessions: u32,
    /// A node using this much CPU (percent of all its cores) gets no new sessions from placement.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u16).range(1..=100), env = "SFUMATO_MAX_CPU")]
    pub max_cpu: u16,
}

/// A seed, `host:port` (host: a name or an IP; IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for SeedAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for SeedAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = match split_host_port(s) {
            Some((h, Some(p))) => (h, p),
            _ => return Err(format!("`{s}` is not host:port")),
        };
        if host.is_empty() || !valid_host(host) {
            return Err(format!("`{s}`: bad host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(SeedAddr { host: host.to_string(), port: p }),
            _ => Err(format!("`{s}`: bad port")),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Read settings from this TOML file (keys: the flag names without `--`, e.g. `http-port = 3000`).
    /// Flags and SFUMATO_* variables override it. Example: docs/sfumato.example.toml.
    #[arg(long, value_name = "FILE", env = "SFUMATO_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// A second RTMP publish on a stream key that is live takes over: the old connection is closed (logged
    /// reason "replaced by a new publisher") and viewers continue on the new stream. Default: refused
    /// (SFUMATO_RTMP_REPLACE: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "SFUMATO_RTMP_REPLACE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub rtmp_replace: bool,
    /// Bytes of the current GOP each RTMP room keeps, so a viewer joining mid-GOP starts at once (an RTMP
    /// encoder can't be asked for a keyframe). A larger GOP is not cached (the viewer waits for the next
    /// keyframe, counted as rtmp_gop_overflows); at most one packet per KiB of it. 0 disables the cache.
    #[arg(long, default_value_t = 4 << 20, env = "SFUMATO_RTMP_GOP_CACHE")]
    pub rtmp_gop_cache: usize,
    /// Estimate each viewer's bandwidth with transport-wide congestion control (str0m's BWE) and send the
    /// room's lowest estimate to the publisher as REMB. Without it viewers are not offered transport-cc and
    /// only their REMB is heard (browsers send it then). Costs server CPU and latency (str0m then paces every viewer's packets). Default off
    /// (SFUMATO_VIEWER_BWE: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "SFUMATO_VIEWER_BWE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub viewer_bwe: bool,
    /// Send viewers' media through str0m (`write_rtp`) instead of sfumato's direct send path (which writes
    /// and encrypts each packet itself, on SSRCs of its own). For comparison and as a fallback; costs
    /// server CPU. Default off (SFUMATO_STR0M_SEND: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "SFUMATO_STR0M_SEND", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub str0m_send: bool,
    /// Bind each media port once, without the RTCP lane: every RTCP datagram then wakes its core as media
    /// does (costs server CPU: each wake-up is a reactor park/unpark). By default the kernel steers RTCP to a
    /// second socket on the same port that a core reads when it is awake anyway, at most a tick (50 ms) late.
    /// For comparison and as a fallback (SFUMATO_NO_RTCP_LANE: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "SFUMATO_NO_RTCP_LANE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_rtcp_lane: bool,
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
    /// Don't pin executors to CPUs (SFUMATO_NO_PIN: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "SFUMATO_NO_PIN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
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
    /// STUN/TURN server offered to WHIP/WHEP clients in `Link: <URL>; rel="ice-server"` headers (on 201 and
    /// OPTIONS): stun:host[:port], stuns:…, turn:host[:port][?transport=udp|tcp], turns:…. Repeatable or
    /// comma-separated. turn:/turns: servers need --ice-server-username and --ice-server-credential.
    #[arg(long, value_name = "URL", value_delimiter = ',', env = "SFUMATO_ICE_SERVER")]
    pub ice_server: Vec<IceUrl>,
    /// Username sent with every turn:/turns: --ice-server (Link `username="…"`).
    #[arg(long, env = "SFUMATO_ICE_SERVER_USERNAME")]
    pub ice_server_username: Option<String>,
    /// Password sent with every turn:/turns: --ice-server (Link `credential="…"; credential-type="password"`).
    /// Anyone who may send OPTIONS to /whip or /whep receives it.
    #[arg(long, env = "SFUMATO_ICE_SERVER_CREDENTIAL", hide_env_values = true)]
    pub ice_server_credential: Option<String>,
}

/// Why the configuration was refused (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("config file {}: cannot read it: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}{where_}: {message}", path.display())]
    File { path: PathBuf, where_: String, message: String },
    #[error(
        "ice server `{0}` is a TURN server: also set --ice-server-username and --ice-server-credential \
         (or ice-server-username/ice-server-credential in the config file, or SFUMATO_ICE_SERVER_USERNAME/_CREDENTIAL)"
    )]
    TurnWithoutCredentials(String),
    #[error("ice-server-username/ice-server-credential are set but no turn: or turns: ice server is configured")]
    CredentialsWithoutTurn,
    #[error("--{0} may only contain printable ASCII other than `\"` and `\\`")]
    BadCredential(&'static str),
}

impl ConfigError {
    /// The process exit code: 2 for every configuration error (as clap does for bad flags).
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Cli(e) => e.exit_code(), // 0 for --help/--version
            _ => 2,
        }
    }
}

/// Parses the command line (and environment), then fills what neither set from the `--config` file.
pub fn load() -> Result<Cli, ConfigError> {
    let matches = Cli::command().try_get_matches()?;
    from_matches(&matches)
}

fn from_matches(matches: &ArgMatches) -> Result<Cli, ConfigError> {
    let mut cli = Cli::from_arg_matches(matches)?;
    let (name, args, cluster) = match &mut cli.command {
        Command::Standalone(args) => ("standalone", args, None),
        Command::Media(m) => ("media", &mut m.node, Some(&mut m.cluster)),
    };
    let sub = matches.subcommand_matches(name).unwrap_or(matches);
    if let Some(path) = args.config.clone() {
        let file = read_file(&path)?;
        let user_set = |id: &str| [matches, sub].iter().any(|m| explicitly_set(m, id));
        file.apply(args, cluster, &mut cli.log_format, user_set);
    }
    ice_servers(args)?;
    Ok(cli)
}

/// Given on the command line or by its environment variable (not a default, not absent).
fn explicitly_set(m: &ArgMatches, id: &str) -> bool {
    let known = m.ids().any(|i| i.as_str() == id);
    known && matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

// --------------------------------------------------------------------------- the file ---

/// The `--config` file: one optional key per flag (kebab-case), typed like the flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    log_format: Option<LogFormat>,
    http_addr: Option<IpAddr>,
    http_port: Option<u16>,
    rtmp_port: Option<u16>,
    rtmp_replace: Option<bool>,
    rtmp_gop_cache: Option<usize>,
    viewer_bwe: Option<bool>,
    str0m_send: Option<bool>,
    no_rtcp_lane: Option<bool>,
    webrtc_port: Option<u16>,
    #[serde(default, deserialize_with = "list")]
    webrtc_ips: Option<Vec<IpAddr>>,
    #[serde(default, deserialize_with = "list")]
    public_ip: Option<Vec<IpAddr>>,
    cores: Option<usize>,
    no_pin: Option<bool>,
    secret: Option<String>,
    io_memory: Option<usize>,
    node_id: Option<String>,
    #[serde(default, deserialize_with = "nats_url")]
    nats_url: Option<String>,
    #[serde(default, deserialize_with = "hook_url")]
    hook_url: Option<String>,
    events_buffer: Option<usize>,
    #[serde(default, deserialize_with = "list")]
    ice_server: Option<Vec<IceUrl>>,
    ice_server_username: Option<String>,
    ice_server_credential: Option<String>,
    // cluster (`sfumato media`)
    #[serde(default, deserialize_with = "list")]
    seeds: Option<Vec<SeedAddr>>,
    #[serde(default, deserialize_with = "zone")]
    zone: Option<String>,
    quic_port: Option<u16>,
    advertise_ip: Option<IpAddr>,
    max_sessions: Option<u32>,
    #[serde(default, deserialize_with = "percent")]
    max_cpu: Option<u16>,
}

/// A zone name: 1-64 characters of A-Z a-z 0-9 - _ .
pub fn parse_zone(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}`: zones are 1-64 characters of A-Z a-z 0-9 - _ ."))
    }
}

fn zone<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    validated(d, parse_zone)
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = u16::deserialize(d)?;
    if (1..=100).contains(&v) {
        Ok(Some(v))
    } else {
        Err(de::Error::custom(format!("{v} is not a percentage in 1..=100")))
    }
}

/// Keys whose values are never echoed in error messages.
const SECRET_KEYS: &[&str] = &["secret", "ice-server-credential", "nats-url", "hook-url"];

pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (where_, key) = locate(text, e.span());
        let mut message = e.message().trim_end().to_string();
        if key.as_deref().is_some_and(|k| SECRET_KEYS.contains(&k)) && message.starts_with("invalid type") {
            message = "invalid type (value not shown), expected a string".to_string();
        }
        if message.starts_with("unknown field") && key.as_deref().is_some_and(|k| k.contains('_')) {
            message.push_str(" (keys are kebab-case flag names: `http-port`, not `http_port`)");
        }
        ConfigError::File { path: path.to_owned(), where_, message }
    })
}

/// ", line N, key `k`" for a span of `text`, and the key (the text before `=` on that line).
fn locate(text: &str, span: Option<std::ops::Range<usize>>) -> (String, Option<String>) {
    let Some(start) = span.map(|s| s.start.min(text.len())) else { return (String::new(), None) };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    match &key {
        Some(k) => (format!(", line {line_no}, key `{k}`"), key),
        None => (format!(", line {line_no}"), None),
    }
}

impl FileConfig {
    /// Copies every value the file has into `args`, except those `user_set` (command line or environment).
    /// Cluster keys apply only to `sfumato media` (`cluster` is `None` for `standalone`, which ignores them).
    fn apply(
        self,
        args: &mut NodeArgs,
        cluster: Option<&mut ClusterArgs>,
        log_format: &mut LogFormat,
        user_set: impl Fn(&str) -> bool,
    ) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = self.$field {
                    if !user_set(stringify!($field)) {
                        args.$field = v.into();
                    }
                }
            )*};
        }
        if let Some(c) = cluster {
            macro_rules! take_cluster {
                ($($field:ident),* $(,)?) => {$(
                    if let Some(v) = self.$field {
                        if !user_set(stringify!($field)) {
                            c.$field = v.into();
                        }
                    }
                )*};
            }
            take_cluster!(seeds, zone, quic_port, advertise_ip, max_sessions, max_cpu);
        }
        take!(rtmp_gop_cache);
        take!(http_addr, http_port, rtmp_port, rtmp_replace, viewer_bwe, str0m_send, no_rtcp_lane, webrtc_port, webrtc_ips, public_ip, cores, no_pin, secret);
        take!(io_memory, node_id, nats_url, hook_url, events_buffer);
        take!(ice_server, ice_server_username, ice_server_credential);
        if let Some(v) = self.log_format {
            if !user_set("log_format") {
                *log_format = v;
            }
        }
    }
}

/// A list setting: a TOML array of strings, or one comma-separated string; each item parsed with `FromStr`.
fn list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    struct ListVisitor<T>(PhantomData<T>);
    fn item<T: FromStr, E: de::Error>(s: &str) -> Result<T, E>
    where
        T::Err: fmt::Display,
    {
        let s = s.trim();
        // A value with `@` may carry credentials: not echoed.
        let shown = if s.contains('@') { "(value not shown)" } else { s };
        s.parse().map_err(|e| E::custom(format!("`{shown}`: {e}")))
    }
    impl<'de, T: FromStr> Visitor<'de> for ListVisitor<T>
    where
        T::Err: fmt::Display,
    {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of strings or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            s.split(',').filter(|p| !p.trim().is_empty()).map(item).collect()
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(item(&s)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor(PhantomData)).map(Some)
}

fn validated<'de, D: Deserializer<'de>>(d: D, check: fn(&str) -> Result<String, String>) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    check(&s).map(Some).map_err(de::Error::custom)
}

fn nats_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    validated(d, crate::events::connector::validate_nats_url)
}

fn hook_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    validated(d, crate::events::connector::validate_hook_url)
}

// ---------------------------------------------------------------------- ICE servers ---

/// A STUN or TURN server URI (RFC 7064 / RFC 7065): `stun:host[:port]`, `stuns:…`,
/// `turn:host[:port][?transport=udp|tcp]`, `turns:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    url: String,
    turn: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceUrlError {
    #[error("the scheme must be stun:, stuns:, turn: or turns:")]
    Scheme,
    #[error("write scheme:host[:port], without `//` (RFC 7064/7065)")]
    Slashes,
    #[error("no credentials in the URL; set ice-server-username and ice-server-credential")]
    UserInfo,
    #[error("the host is missing")]
    NoHost,
    #[error("the host is not a host name or IP address")]
    BadHost,
    #[error("the port must be 1-65535")]
    BadPort,
    #[error("only turn:/turns: take a query, and only ?transport=udp or ?transport=tcp")]
    BadQuery,
}

impl IceUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn is_turn(&self) -> bool {
        self.turn
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl FromStr for IceUrl {
    type Err = IceUrlError;

    fn from_str(s: &str) -> Result<Self, IceUrlError> {
        let url = s.trim();
        let (scheme, rest) = url.split_once(':').ok_or(IceUrlError::Scheme)?;
        let turn = match scheme.to_ascii_lowercase().as_str() {
            "stun" | "stuns" => false,
            "turn" | "turns" => true,
            _ => return Err(IceUrlError::Scheme),
        };
        if rest.starts_with("//") {
            return Err(IceUrlError::Slashes);
        }
        if rest.contains('@') {
            return Err(IceUrlError::UserInfo);
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((hp, q)) => (hp, Some(q)),
            None => (rest, None),
        };
        if let Some(q) = query {
            let transport = q.strip_prefix("transport=").map(str::to_ascii_lowercase);
            if !turn || !matches!(transport.as_deref(), Some("udp" | "tcp")) {
                return Err(IceUrlError::BadQuery);
            }
        }
        let (host, port) = split_host_port(hostport).ok_or(IceUrlError::BadHost)?;
        if host.is_empty() {
            return Err(IceUrlError::NoHost);
        }
        if !valid_host(host) {
            return Err(IceUrlError::BadHost);
        }
        if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            return Err(IceUrlError::BadPort);
        }
        Ok(IceUrl { url: url.to_string(), turn })
    }
}

/// `host[:port]` or `[v6][:port]` → (host, port text).
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        return match after {
            "" => Some((addr, None)),
            _ => Some((addr, Some(after.strip_prefix(':')?))),
        };
    }
    match s.split_once(':') {
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

fn valid_host(host: &str) -> bool {
    host.parse::<std::net::Ipv6Addr>().is_ok()
        || (host.len() <= 253
            && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')))
}

/// One ICE server as announced to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub url: IceUrl,
    /// `(username, credential)` for TURN.
    pub credentials: Option<(String, String)>,
}

impl IceServer {
    /// The `Link` header value (RFC 9725 §4.6).
    pub fn link_value(&self) -> String {
        match &self.credentials {
            None => format!("<{}>; rel=\"ice-server\"", self.url),
            Some((user, cred)) => format!(
                "<{}>; rel=\"ice-server\"; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\"",
                self.url
            ),
        }
    }
}

/// The configured ICE servers with their credentials, checked: TURN needs both username and credential,
/// credentials need a TURN server, and both must fit in a quoted header parameter.
pub fn ice_servers(args: &NodeArgs) -> Result<Vec<IceServer>, ConfigError> {
    let creds = match (&args.ice_server_username, &args.ice_server_credential) {
        (Some(u), Some(c)) => Some((u.clone(), c.clone())),
        _ => None,
    };
    let partial = args.ice_server_username.is_some() != args.ice_server_credential.is_some();
    for (flag, value) in [("ice-server-username", &args.ice_server_username), ("ice-server-credential", &args.ice_server_credential)] {
        if value.as_deref().is_some_and(|v| v.is_empty() || !v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')) {
            return Err(ConfigError::BadCredential(flag));
        }
    }
    let any_turn = args.ice_server.iter().any(IceUrl::is_turn);
    if (creds.is_some() || partial) && !any_turn {
        return Err(ConfigError::CredentialsWithoutTurn);
    }
    args.ice_server
        .iter()
        .map(|url| match (url.is_turn(), &creds) {
            (false, _) => Ok(IceServer { url: url.clone(), credentials: None }),
            (true, Some(c)) => Ok(IceServer { url: url.clone(), credentials: Some(c.clone()) }),
            (true, None) => Err(ConfigError::TurnWithoutCredentials(url.to_string())),
        })
        .collect()
}

pub fn init_logging(format: &LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,str0m=warn,is=warn"));
    // A closed stderr (the supervisor's pipe went away) must not kill the server: tracing-subscriber would
    // report the failed write with eprintln!, which panics when stderr itself is the broken pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/sfumato.example.toml");

    /// The example with every `# key = value` line uncommented.
    fn example_uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ").and_then(|r| r.split_once(" = ").map(|(k, _)| (k, r))) {
                Some((k, r)) if k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') => r,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Long names of every flag a subcommand takes (its own and the global ones), but help/version/config.
    fn flag_names(subcommand: &str) -> Vec<String> {
        let mut cmd = Cli::command();
        cmd.build();
        let sub = cmd.find_subcommand(subcommand).expect("subcommand").clone();
        let mut names: Vec<String> = sub
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|n| !matches!(n.as_str(), "help" | "version" | "config"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn parse(argv: &[&str]) -> Result<Cli, ConfigError> {
        let matches = Cli::command().try_get_matches_from(argv)?;
        from_matches(&matches)
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("sfumato-config-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        path
    }

    fn args(cli: &Cli) -> &NodeArgs {
        match &cli.command {
            Command::Standalone(a) => a,
            Command::Media(m) => &m.node,
        }
    }

    fn cluster(cli: &Cli) -> Option<&ClusterArgs> {
        match &cli.command {
            Command::Standalone(_) => None,
            Command::Media(m) => Some(&m.cluster),
        }
    }

    #[test]
    fn example_parses_and_lists_every_flag() {
        let as_shipped = parse_file(Path::new("example"), EXAMPLE).expect("example parses as shipped");
        assert!(as_shipped.http_port.is_none(), "the example's settings are all commented out");
        let text = example_uncommented();
        parse_file(Path::new("example"), &text).expect("example parses with every key uncommented");
        let table: toml::Table = toml::from_str(&text).expect("uncommented example is TOML");
        let mut keys: Vec<String> = table.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, flag_names("media"), "docs/sfumato.example.toml must list exactly the flags of `media`");
        let standalone = flag_names("standalone");
        assert!(standalone.iter().all(|f| keys.contains(f)), "`standalone`'s flags are a subset of `media`'s");
        // every key is also applied: an uncommented example changes every value it names
        let path = temp_file("full-example", &text);
        let cli = parse(&["sfumato", "standalone", "--config", path.to_str().unwrap_or_default()]).expect("applies");
        let a = args(&cli);
        assert_eq!((a.http_port, a.rtmp_port, a.cores, a.no_pin), (3000, Some(1935), Some(4), false));
        assert_eq!(a.webrtc_ips.len(), 2);
        assert_eq!(a.public_ip.len(), 1);
        assert_eq!(a.node_id.as_deref(), Some("sfu-1"));
        assert_eq!(a.ice_server.len(), 2);
        assert_eq!(a.ice_server_credential.as_deref(), Some("change-me"));
        assert!(cluster(&cli).is_none(), "standalone ignores the cluster keys");
        let cli = parse(&["sfumato", "media", "--config", path.to_str().unwrap_or_default()]).expect("applies");
        let c = cluster(&cli).expect("media has cluster settings");
        assert_eq!(c.seeds.len(), 2);
        assert_eq!((c.zone.as_str(), c.quic_port, c.max_sessions, c.max_cpu), ("eu-west-1a", 4433, 500, 85));
        assert_eq!(c.advertise_ip, Some(IpAddr::from([192, 0, 2, 10])));
        assert_eq!(args(&cli).http_port, 3000);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn cluster_flags_parse_and_validate() {
        let cli = parse(&["sfumato", "media", "--seeds", "10.0.0.1:4433, seeds.media.svc:4433,[::1]:9", "--zone", "z-1"])
            .expect("valid");
        let c = cluster(&cli).expect("media");
        let seeds: Vec<String> = c.seeds.iter().map(ToString::to_string).collect();
        assert_eq!(seeds, ["10.0.0.1:4433", "seeds.media.svc:4433", "[::1]:9"]);
        assert_eq!((c.zone.as_str(), c.quic_port, c.max_cpu), ("z-1", 4433, 90));
        for bad in [["--seeds", "nohost"], ["--seeds", "h:0"], ["--zone", "a b"], ["--max-cpu", "101"]] {
            let e = parse(&["sfumato", "media", bad[0], bad[1]]).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
        let (_, e) = config_error("bad-zone", "zone = \"a/b\"\n");
        assert!(e.contains("key `zone`"), "{e}");
    }

    #[test]
    fn every_flag_has_an_sfumato_env_var() {
        let mut cmd = Cli::command();
        cmd.build();
        let standalone = cmd.find_subcommand("standalone").expect("standalone").clone();
        let media = cmd.find_subcommand("media").expect("media").clone();
        for arg in standalone.get_arguments().chain(media.get_arguments()).chain(cmd.get_arguments()) {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            let want = format!("SFUMATO_{}", long.to_ascii_uppercase().replace('-', "_"));
            assert_eq!(env, want, "--{long}");
            assert!(arg.get_help().is_some(), "--{long} has no help text");
        }
    }

    #[test]
    fn file_fills_defaults_and_the_command_line_wins() {
        let path = temp_file(
            "precedence",
            "http-port = 4100\nwebrtc-port = 21000\nsecret = \"from-file\"\nlog-format = \"json\"\nno-pin = true\n\
             public-ip = \"198.51.100.1, 198.51.100.2\"\n",
        );
        let p = path.to_str().unwrap_or_default();
        let cli = parse(&["sfumato", "standalone", "--config", p, "--http-port", "4200", "--public-ip", "192.0.2.1"])
            .expect("valid");
        let a = args(&cli);
        assert_eq!(a.http_port, 4200, "command line beats file");
        assert_eq!(a.webrtc_port, 21000, "file beats default");
        assert_eq!(a.secret, "from-file");
        assert!(a.no_pin);
        assert_eq!(a.public_ip, vec!["192.0.2.1".parse::<IpAddr>().unwrap_or(IpAddr::from([0; 4]))], "lists replace");
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = parse(&["sfumato", "--log-format", "text", "standalone", "--config", p]).expect("valid");
        assert_eq!(cli.log_format, LogFormat::Text, "global flag before the subcommand beats the file");
        assert_eq!(args(&cli).public_ip.len(), 2, "comma-separated string in the file");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn environment_beats_the_file() {
        let file = FileConfig { http_port: Some(1), webrtc_port: Some(2), ..Default::default() };
        let mut a = args(&parse(&["sfumato", "standalone"]).expect("defaults")).clone();
        let mut lf = LogFormat::Text;
        file.apply(&mut a, None, &mut lf, |id| id == "http_port"); // as if SFUMATO_HTTP_PORT were set
        assert_eq!((a.http_port, a.webrtc_port), (3000, 2));
    }

    fn config_error(name: &str, text: &str) -> (PathBuf, String) {
        let path = temp_file(name, text);
        let err = parse(&["sfumato", "standalone", "--config", path.to_str().unwrap_or_default()])
            .err()
            .map(|e| {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            })
            .unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        println!("{name}: {err}");
        (path, err)
    }

    fn file_error(name: &str, text: &str) -> String {
        let (path, err) = config_error(name, text);
        assert!(err.contains(&path.display().to_string()), "error names the file: {err}");
        err
    }

    #[test]
    fn invalid_files_are_explained() {
        let e = file_error("syntax", "http-port = \n");
        assert!(e.contains("line 1"), "{e}");
        let e = file_error("unknown", "http-port = 1\nhttp_port = 2\n");
        assert!(e.contains("line 2") && e.contains("http_port") && e.contains("kebab-case"), "{e}");
        let e = file_error("type", "cores = 2\nhttp-port = \"x\"\n");
        assert!(e.contains("key `http-port`") && e.contains("line 2"), "{e}");
        let e = file_error("range", "http-port = 70000\n");
        assert!(e.contains("key `http-port`"), "{e}");
        let e = file_error("ip", "webrtc-ips = [\"1.2.3.4\", \"nope\"]\n");
        assert!(e.contains("key `webrtc-ips`") && e.contains("nope"), "{e}");
        let e = file_error("secret", "secret = 123456\n");
        assert!(e.contains("key `secret`") && !e.contains("123456"), "secret values are not echoed: {e}");
        let e = file_error("nats", "nats-url = \"http://x\"\n");
        assert!(e.contains("key `nats-url`"), "{e}");
        let e = file_error("ice", "ice-server = \"stun://x\"\n");
        assert!(e.contains("key `ice-server`") && e.contains("//"), "{e}");
        let (_, e) = config_error("turn", "ice-server = \"turn:t.example\"\n");
        assert!(e.contains("ice-server-username"), "{e}");
        let missing = parse(&["sfumato", "standalone", "--config", "/nonexistent/sfumato.toml"]).err();
        let missing = missing.map(|e| (e.exit_code(), e.to_string())).unwrap_or_default();
        assert_eq!(missing.0, 2);
        assert!(missing.1.contains("/nonexistent/sfumato.toml") && missing.1.contains("cannot read"), "{}", missing.1);
    }

    #[test]
    fn ice_urls() {
        for ok in [
            "stun:stun.example.org",
            "stun:stun.example.org:3478",
            "stuns:1.2.3.4:5349",
            "stun:[2001:db8::1]:3478",
            "turn:turn.example.org?transport=udp",
            "turns:turn.example.org:443?transport=tcp",
            "TURN:t.example",
        ] {
            assert!(ok.parse::<IceUrl>().is_ok(), "{ok}");
        }
        let err = |s: &str| s.parse::<IceUrl>().err();
        assert!(matches!(err("http://x"), Some(IceUrlError::Scheme)));
        assert!(matches!(err("stun"), Some(IceUrlError::Scheme)));
        assert!(matches!(err("stun://x"), Some(IceUrlError::Slashes)));
        assert!(matches!(err("turn:u:p@x"), Some(IceUrlError::UserInfo)));
        assert!(matches!(err("stun:"), Some(IceUrlError::NoHost)));
        assert!(matches!(err("stun::3478"), Some(IceUrlError::NoHost)));
        assert!(matches!(err("stun:a b"), Some(IceUrlError::BadHost)));
        assert!(matches!(err("stun:[zz]:1"), Some(IceUrlError::BadHost)));
        assert!(matches!(err("stun:x:0"), Some(IceUrlError::BadPort)));
        assert!(matches!(err("stun:x:99999"), Some(IceUrlError::BadPort)));
        assert!(matches!(err("stun:x?transport=udp"), Some(IceUrlError::BadQuery)));
        assert!(matches!(err("turn:x?transport=sctp"), Some(IceUrlError::BadQuery)));
    }

    #[test]
    fn ice_server_credentials_and_link_values() {
        let base = || args(&parse(&["sfumato", "standalone"]).expect("defaults")).clone();
        let url = |s: &str| s.parse::<IceUrl>().expect("valid url");
        let mut a = base();
        a.ice_server = vec![url("stun:s.example:3478"), url("turn:t.example?transport=udp")];
        assert!(matches!(ice_servers(&a), Err(ConfigError::TurnWithoutCredentials(_))));
        a.ice_server_username = Some("user".into());
        assert!(matches!(ice_servers(&a), Err(ConfigError::TurnWithoutCredentials(_))));
        a.ice_server_credential = Some("pa\"ss".into());
        assert!(matches!(ice_servers(&a), Err(ConfigError::BadCredential("ice-server-credential"))));
        a.ice_server_credential = Some("pass".into());
        let links: Vec<String> = ice_servers(&a).expect("valid").iter().map(IceServer::link_value).collect();
        assert_eq!(
            links,
            [
                "<stun:s.example:3478>; rel=\"ice-server\"".to_string(),
                "<turn:t.example?transport=udp>; rel=\"ice-server\"; username=\"user\"; credential=\"pass\"; \
                 credential-type=\"password\""
                    .to_string(),
            ]
        );
        let mut a = base();
        a.ice_server = vec![url("stun:s.example")];
        a.ice_server_username = Some("user".into());
        assert!(matches!(ice_servers(&a), Err(ConfigError::CredentialsWithoutTurn)));
        let e = parse(&["sfumato", "standalone", "--ice-server", "stun:ok,ftp:x"]).err();
        assert_eq!(e.map(|e| e.exit_code()), Some(2));
    }
}
