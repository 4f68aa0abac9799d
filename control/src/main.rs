//! `sfumato`: one binary, many roles. `standalone` runs everything on one node.

mod auth;
mod cascade;
mod cascade_wire;
mod cluster_msg;
mod cluster_shell;
mod cluster_start;
mod cluster_view;
mod config;
mod core_shell;
mod core_state;
mod events;
mod http_api;
mod messages;
mod node;
mod placement;
mod rtmp_ingest;
mod stats;

fn main() {
    let cli = match config::load() {
        Ok(cli) => cli,
        Err(config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("sfumato: {e}");
            std::process::exit(e.exit_code());
        }
    };
    config::init_logging(&cli.log_format);
    let ran = match cli.command {
        config::Command::Standalone(args) => node::run_standalone(args),
        config::Command::Media(args) => node::run_media(args),
    };
    let code = match ran {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sfumato: {e}");
            1
        }
    };
    std::process::exit(code);
}
