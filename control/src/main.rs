//! `sfumato`: one binary, many roles. `standalone` runs everything on one node.

mod auth;
mod config;
mod core_shell;
mod core_state;
mod events;
mod http_api;
mod messages;
mod node;
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
    let code = match cli.command {
        config::Command::Standalone(args) => match node::run_standalone(args) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("sfumato: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
