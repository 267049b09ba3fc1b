//! The database check: reachable, credentials accepted, and the migration
//! history against the migrations this binary carries. The database is
//! only read (SQLite is opened read-only; a missing PostgreSQL database is
//! not created).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AnyConnection, ConnectOptions, Connection, Row};

use super::host::shown;
use super::Check;
use crate::settings::{DatabaseTarget, Settings};
use crate::store::{migrator, Backend};

const NAME: &str = "database";

/// Tables the reference daemon also creates; finding them without plugind's
/// migration history means the database is another daemon's.
const SHARED_TABLE_NAMES: [&str; 2] = ["plugins", "plugin_installations"];

/// What the other checks learn from the database.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// A tenant with an installation, to check Dify's inner API key with.
    pub tenant_id: Option<String>,
    /// The `meta.runner.version` of every stored declaration.
    pub runner_versions: Vec<String>,
}

pub async fn check(settings: &Settings, timeout: Duration) -> (Check, Facts) {
    let target = match settings.database_target() {
        Ok(t) => t,
        Err(e) => return (Check::fail(NAME, e), Facts::default()),
    };
    sqlx::any::install_default_drivers();
    match target {
        DatabaseTarget::Sqlite(path) => sqlite(&path, timeout).await,
        DatabaseTarget::Postgres(url) => postgres(url.expose(), timeout).await,
    }
}

async fn sqlite(path: &Path, timeout: Duration) -> (Check, Facts) {
    if !path.exists() {
        let check = match super::host::writable_ancestor(path.parent().unwrap_or(Path::new("."))) {
            Ok(_) => Check::ok(
                NAME,
                format!(
                    "SQLite {} does not exist yet; `plugind serve` creates it",
                    shown(path)
                ),
            ),
            Err(e) => Check::fail(
                NAME,
                format!(
                    "the SQLite file {} cannot be created: {e}; make its folder writable or set DATABASE_URL",
                    shown(path)
                ),
            ),
        };
        return (check, Facts::default());
    }
    let url = format!("sqlite://{}?mode=ro", path.display());
    match connect(&url, timeout).await {
        Ok(mut conn) => {
            let label = format!("SQLite {}", shown(path));
            let out = inspect(&mut conn, Backend::Sqlite, &label).await;
            let _ = conn.close().await;
            out
        }
        Err(e) => (
            Check::fail(
                NAME,
                format!(
                    "cannot open the SQLite file {}: {e}; check that it is a database and readable, or set DATABASE_URL",
                    shown(path)
                ),
            ),
            Facts::default(),
        ),
    }
}

async fn postgres(url: &str, timeout: Duration) -> (Check, Facts) {
    let options = match PgConnectOptions::from_str(url) {
        Ok(o) => o,
        Err(e) => {
            return (
                Check::fail(NAME, format!("the PostgreSQL URL does not parse: {e}; check DATABASE_URL or the DB_* settings")),
                Facts::default(),
            )
        }
    };
    let server = format!("PostgreSQL {}:{}", options.get_host(), options.get_port());
    let database = options.get_database().unwrap_or("postgres").to_owned();
    let label = format!("{server}/{database}");
    match connect(url, timeout).await {
        Ok(mut conn) => {
            let out = inspect(&mut conn, Backend::Postgres, &label).await;
            let _ = conn.close().await;
            out
        }
        Err(e) if pg_code(&e).as_deref() == Some("3D000") => {
            // The database is missing; serve creates it if the server and
            // the credentials are good, which the maintenance database shows.
            let maintenance = options.database("postgres");
            let reached: Result<PgConnection, sqlx::Error> =
                bounded(timeout, maintenance.connect()).await;
            let check = match reached {
                Ok(conn) => {
                    let _ = conn.close().await;
                    Check::ok(
                        NAME,
                        format!("{server} reachable; database {database} does not exist yet and `plugind serve` creates it"),
                    )
                }
                Err(e) => Check::fail(NAME, describe_pg_error(&server, &e)),
            };
            (check, Facts::default())
        }
        Err(e) => (
            Check::fail(NAME, describe_pg_error(&server, &e)),
            Facts::default(),
        ),
    }
}

/// One connection, no pool: a pool retries refused connections until its
/// timeout and then reports only that it timed out.
async fn connect(url: &str, timeout: Duration) -> Result<AnyConnection, sqlx::Error> {
    bounded(timeout, AnyConnection::connect(url)).await
}

async fn bounded<C>(
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<C, sqlx::Error>>,
) -> Result<C, sqlx::Error> {
    // Under the check's own limit, so the real cause is what gets reported.
    let limit = timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    tokio::time::timeout(limit, connect)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            )))
        })
}

fn pg_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A PostgreSQL failure as what is wrong and what to do.
fn describe_pg_error(server: &str, e: &sqlx::Error) -> String {
    match pg_code(e).as_deref() {
        Some("28P01") | Some("28000") => format!(
            "{server} refused the credentials ({e}); check DB_USERNAME and DB_PASSWORD"
        ),
        Some("3D000") => format!("{server}: {e}; check DB_DATABASE"),
        _ => match e {
            sqlx::Error::Io(_) => format!(
                "cannot reach {server} ({e}); check DB_HOST and DB_PORT (or DATABASE_URL) and that PostgreSQL is running"
            ),
            sqlx::Error::Tls(_) => format!("TLS to {server} failed ({e}); check DB_SSL_MODE"),
            _ => format!("{server}: {e}; check DATABASE_URL or the DB_* settings"),
        },
    }
}

/// One applied migration.
struct Applied {
    success: bool,
    checksum: Vec<u8>,
}

async fn inspect(conn: &mut AnyConnection, backend: Backend, label: &str) -> (Check, Facts) {
    let history = match table_exists(conn, backend, "_sqlx_migrations").await {
        Ok(h) => h,
        Err(e) => {
            return (
                Check::fail(NAME, format!("{label}: cannot list tables: {e}")),
                Facts::default(),
            )
        }
    };
    if !history {
        let mut foreign = Vec::new();
        for table in SHARED_TABLE_NAMES {
            if table_exists(conn, backend, table).await.unwrap_or(false) {
                foreign.push(table);
            }
        }
        let check = if foreign.is_empty() {
            Check::ok(
                NAME,
                format!("{label} is empty; `plugind serve` creates the schema"),
            )
        } else {
            Check::fail(
                NAME,
                format!(
                    "{label} holds tables ({}) but no plugind migration history: it is another daemon's \
                     database (the reference plugin daemon's?); give plugind a database of its own \
                     (DB_DATABASE, e.g. `plugind`; serve creates it)",
                    foreign.join(", ")
                ),
            )
        };
        return (check, Facts::default());
    }
    // `success` as a number: the Any driver cannot decode SQLite booleans.
    let rows = match sqlx::query(
        "SELECT version, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT) AS success, checksum \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return (
                Check::fail(
                    NAME,
                    format!("{label}: cannot read the migration history: {e}"),
                ),
                Facts::default(),
            )
        }
    };
    let mut applied = BTreeMap::new();
    for row in rows {
        let version: i64 = row.try_get("version").unwrap_or_default();
        applied.insert(
            version,
            Applied {
                success: row.try_get::<i64, _>("success").unwrap_or(0) == 1,
                checksum: row.try_get("checksum").unwrap_or_default(),
            },
        );
    }
    let known: BTreeMap<i64, &[u8]> = migrator(backend)
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    let check = migration_state(label, &applied, &known);
    let facts = if check.status == super::Status::Ok {
        facts(conn).await
    } else {
        Facts::default()
    };
    (check, facts)
}

fn migration_state(
    label: &str,
    applied: &BTreeMap<i64, Applied>,
    known: &BTreeMap<i64, &[u8]>,
) -> Check {
    if let Some((v, _)) = applied.iter().find(|(_, a)| !a.success) {
        return Check::fail(
            NAME,
            format!("{label}: migration {v} failed part-way; restore the database from a backup taken before it, then start plugind again"),
        );
    }
    if let Some(v) = applied.keys().find(|v| !known.contains_key(v)) {
        return Check::fail(
            NAME,
            format!("{label} was migrated by a newer plugind (migration {v} is unknown to this one); run that version or newer"),
        );
    }
    if let Some((v, _)) = applied
        .iter()
        .find(|(v, a)| known.get(v).is_some_and(|c| *c != a.checksum.as_slice()))
    {
        return Check::fail(
            NAME,
            format!("{label}: migration {v} differs from the one this plugind carries; run the plugind version that created the database"),
        );
    }
    let pending = known.keys().filter(|v| !applied.contains_key(v)).count();
    let latest = applied.keys().next_back().copied().unwrap_or_default();
    if pending == 0 {
        Check::ok(
            NAME,
            format!("{label}, schema at migration {latest}, up to date"),
        )
    } else {
        Check::ok(
            NAME,
            format!("{label}, schema at migration {latest}; {pending} pending, applied by `plugind serve` at start"),
        )
    }
}

async fn table_exists(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let sql = match backend {
        Backend::Sqlite => "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1",
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let row = sqlx::query(sql).bind(table).fetch_one(&mut *conn).await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// A tenant and the runner versions, best effort: a failure here leaves the
/// other checks with less to go on, it is not a database problem.
async fn facts(conn: &mut AnyConnection) -> Facts {
    let tenant_id =
        sqlx::query("SELECT tenant_id FROM plugin_installations ORDER BY created_at DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<String, _>("tenant_id").ok());
    let mut runner_versions: Vec<String> =
        sqlx::query("SELECT declaration FROM plugin_declarations")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.try_get::<String, _>("declaration").ok())
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter_map(|d| {
                d.pointer("/meta/runner/version")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
    runner_versions.sort();
    runner_versions.dedup();
    Facts {
        tenant_id,
        runner_versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(v: &[(i64, bool, &[u8])]) -> BTreeMap<i64, Applied> {
        v.iter()
            .map(|(v, s, c)| {
                (
                    *v,
                    Applied {
                        success: *s,
                        checksum: c.to_vec(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn migration_history_is_judged_against_the_binary() {
        let known: BTreeMap<i64, &[u8]> = [(1, b"a".as_slice()), (7, b"b".as_slice())].into();
        let up = migration_state("db", &applied(&[(1, true, b"a"), (7, true, b"b")]), &known);
        assert_eq!(up.status, super::super::Status::Ok);
        assert!(up.message.contains("up to date"), "{}", up.message);
        let pending = migration_state("db", &applied(&[(1, true, b"a")]), &known);
        assert_eq!(pending.status, super::super::Status::Ok);
        assert!(pending.message.contains("1 pending"), "{}", pending.message);
        let newer = migration_state("db", &applied(&[(1, true, b"a"), (9, true, b"x")]), &known);
        assert!(newer.message.contains("newer plugind"), "{}", newer.message);
        let dirty = migration_state("db", &applied(&[(1, true, b"a"), (7, false, b"b")]), &known);
        assert!(
            dirty.message.contains("failed part-way"),
            "{}",
            dirty.message
        );
        let changed = migration_state("db", &applied(&[(1, true, b"z")]), &known);
        assert!(changed.message.contains("differs"), "{}", changed.message);
    }
}
