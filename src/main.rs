//! `dimple`: thin entry point. One line of error on stderr, an exit code by kind.

mod cli;

use clap::Parser;
use dimple::ErrorKind;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The agent runs unattended: its default log says what it did, not only what failed.
    let default_filter = if cli.command.is_agent() { "info" } else { "warn" };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            // The AWS SDK warns about every credential source it tries (instance
            // metadata on a laptop...): only its errors are worth a line by default.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("{default_filter},aws_config=error,aws_smithy_runtime=error").into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        cli::LogFormat::Json => logs.json().init(),
        cli::LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dimple: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // thiserror's `{0}` messages already include their source: skip repeats.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            line.retain(|c| c != '\n');
            eprintln!("dimple: {line}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 1 invalid input or set-up, 3 unavailable (retry later), 4 conflict, 5 bad data,
/// 70 internal. (2 is clap's usage error.)
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<dimple::Error>().map(dimple::Error::kind) {
        Some(ErrorKind::Unavailable) => 3,
        Some(ErrorKind::Conflict) => 4,
        Some(ErrorKind::Data) => 5,
        Some(ErrorKind::Internal) => 70,
        _ => 1,
    }
}
