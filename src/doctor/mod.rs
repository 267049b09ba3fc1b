//! `plugind doctor`: checks what `plugind serve` needs before it is started
//! (settings, database and its migrations, storage, uv and the Python
//! interpreters plugins get, free ports, Dify's inner API and its key, and
//! on the serverless platform AWS credentials, the bucket, Lambda and the
//! bootstrap), one line per check saying `ok` or what is wrong and what to
//! do. The exit status is 0 only when no check failed.
//!
//! Checks only look: nothing is created or changed, except short-lived
//! probe files and a probe object that are removed at once.

mod aws;
mod database;
mod dify;
mod host;

use std::fmt;
use std::io::Write;
use std::time::Duration;

use clap::Parser;

use crate::settings::{Platform, Settings, StorageType};

/// Flags of `plugind doctor`. The settings themselves come from the
/// environment and `.env`, exactly as `plugind serve` reads them.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// A Dify workspace (tenant) id to check the inner API key with. Dify
    /// looks the tenant up before it checks the key, so without one the key
    /// is only checked when plugind's database already records a tenant.
    #[arg(long, value_name = "TENANT_ID")]
    pub tenant_id: Option<String>,

    /// Longest wait for each check, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but something deserves a look; does not fail the run.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// For `Ok`: detail, possibly empty. Otherwise what is wrong and what
    /// to do.
    pub message: String,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail)
    }
    pub fn warn(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, message)
    }
    pub fn fail(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, message)
    }
    fn new(name: impl Into<String>, status: Status, message: impl Into<String>) -> Self {
        // One line per check, whatever an error's text holds.
        let message: String = message
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            name: name.into(),
            status,
            message,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{}:", self.name);
        match (self.status, self.message.is_empty()) {
            (Status::Ok, true) => write!(f, "{name:<18} ok"),
            (Status::Ok, false) => write!(f, "{name:<18} ok ({})", self.message),
            (Status::Warn, _) => write!(f, "{name:<18} warning: {}", self.message),
            (Status::Fail, _) => write!(f, "{name:<18} FAILED: {}", self.message),
        }
    }
}

/// Every check's outcome, in the order they ran.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn push(&mut self, check: Check, out: &mut dyn Write) {
        // Printed as it comes: a slow check shows which one is waiting.
        let _ = writeln!(out, "{check}");
        let _ = out.flush();
        self.checks.push(check);
    }

    fn summary(&self) -> String {
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if failed == 0 {
            format!("plugind doctor: all {} checks passed", self.checks.len())
        } else {
            format!(
                "plugind doctor: {failed} of {} checks failed",
                self.checks.len()
            )
        }
    }
}

/// The settings of `plugind serve`, from the environment (and `.env`, which
/// `main` has loaded): the first line of clap's message when they do not
/// parse, or the message of [`Settings::validate`].
pub fn settings_from_env() -> Result<Settings, String> {
    #[derive(Parser)]
    #[command(name = "plugind")]
    struct EnvOnly {
        #[command(flatten)]
        settings: Settings,
    }
    let parsed = EnvOnly::try_parse_from(["plugind"]).map_err(|e| clap_message(&e))?;
    parsed.settings.validate()?;
    Ok(parsed.settings)
}

/// clap's error without its usage lines, on one line.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = body.join(" ");
    let joined = joined.strip_prefix("error: ").unwrap_or(&joined).to_owned();
    format!("{joined}; set it in the environment or in .env (see `plugind serve --help`)")
}

/// Runs every check, printing each line to `out` as it completes.
pub async fn run(
    settings: Result<Settings, String>,
    args: &DoctorArgs,
    out: &mut dyn Write,
) -> Report {
    let mut report = Report::default();
    let settings = match settings {
        Ok(s) => s,
        Err(message) => {
            report.push(Check::fail("settings", message), out);
            let _ = writeln!(out, "{}", report.summary());
            return report;
        }
    };
    let inert = settings.inert_settings();
    report.push(
        if inert.is_empty() {
            Check::ok("settings", "")
        } else {
            Check::warn("settings", inert.join("; "))
        },
        out,
    );
    let timeout = Duration::from_secs(args.timeout.max(1));

    let (db_check, facts) = bounded(
        "database",
        timeout,
        database::check(&settings, timeout),
        database::Facts::default(),
    )
    .await;
    report.push(db_check, out);

    for check in host::storage(&settings) {
        report.push(check, out);
    }
    if settings.plugin_storage_type == StorageType::AwsS3
        || settings.platform == Platform::Serverless
    {
        let sdk = crate::storage::aws_sdk_config(&settings).await;
        let credentials = bounded_check("aws credentials", timeout, aws::credentials(&sdk)).await;
        let have_credentials = credentials.status != Status::Fail;
        report.push(credentials, out);
        let mut calls = vec!["s3 bucket"];
        if settings.platform == Platform::Serverless {
            calls.push("lambda");
        }
        for name in calls {
            let check = if !have_credentials {
                Check::fail(name, "not checked without AWS credentials")
            } else if name == "lambda" {
                bounded_check(name, timeout, aws::lambda(&sdk, &settings)).await
            } else {
                bounded_check(name, timeout, aws::bucket(&sdk, &settings)).await
            };
            report.push(check, out);
        }
        if settings.platform == Platform::Serverless {
            report.push(aws::bootstrap(&settings), out);
        }
    }

    // uv builds local environments and resolves Lambda artifacts alike.
    let env = crate::runtime::python_env::PythonEnvConfig::from_settings(&settings);
    report.push(bounded_check("uv", timeout, host::uv(&env)).await, out);
    if settings.platform == Platform::Local {
        for version in host::wanted_versions(&facts.runner_versions) {
            let name = format!("python {version}");
            let check = host::interpreter(&env, &name, &version);
            report.push(bounded_check(&name, timeout, check).await, out);
        }
    }

    for check in host::ports(&settings) {
        report.push(check, out);
    }

    let tenant = args.tenant_id.clone().or(facts.tenant_id);
    report.push(
        bounded_check(
            "dify inner api",
            timeout,
            dify::check(&settings, tenant.as_deref(), timeout),
        )
        .await,
        out,
    );

    let _ = writeln!(out, "{}", report.summary());
    report
}

/// `check` given at most `timeout` (the lookups can hang on a dead host).
async fn bounded_check(
    name: &str,
    timeout: Duration,
    check: impl std::future::Future<Output = Check>,
) -> Check {
    bounded(name, timeout, async { (check.await, ()) }, ())
        .await
        .0
}

async fn bounded<T>(
    name: &str,
    timeout: Duration,
    check: impl std::future::Future<Output = (Check, T)>,
    fallback: T,
) -> (Check, T) {
    match tokio::time::timeout(timeout, check).await {
        Ok(done) => done,
        Err(_) => (
            Check::fail(
                name,
                format!(
                    "no answer within {} s; check that the host is reachable from here (or raise --timeout)",
                    timeout.as_secs()
                ),
            ),
            fallback,
        ),
    }
}

/// `plugind doctor`: prints the report and returns the process's exit code.
pub async fn main(args: DoctorArgs) -> i32 {
    let settings = settings_from_env();
    let mut stdout = std::io::stdout();
    let report = run(settings, &args, &mut stdout).await;
    if report.passed() {
        0
    } else {
        1
    }
}
