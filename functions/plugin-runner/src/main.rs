//! The Lambda bootstrap that owns a Dify plugin child process and relays its
//! session lines through Lambda response streaming. Its runtime loop arrives
//! with the serverless runtime.

fn main() {
    eprintln!("plugin-runner: the Lambda bootstrap is not built yet");
    std::process::exit(1);
}
