//! The environment a plugin process and its build steps start with: nothing
//! of the daemon's own, only an allow-list.
//!
//! The reference daemon hands plugins its whole environment
//! (`internal/core/local_runtime/subprocess.go`, `cmd.Environ()`), which
//! gives every plugin SERVER_KEY, the inner API key and the database
//! password. Here a plugin sees only what it needs to run and to reach the
//! network the way the daemon does.

use std::collections::BTreeMap;
use std::path::Path;

/// The PATH every plugin gets (after its own venv's `bin`), whatever the
/// daemon's PATH holds: the daemon's may name private folders.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Names passed on from the daemon's environment when set: locale and time
/// zone, the TLS trust store (a TLS-intercepting proxy needs its CA to reach
/// the plugin too) and the proxy settings.
const INHERITED: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// Prefixes passed on the same way (`LC_ALL`, `LC_CTYPE`, …).
const INHERITED_PREFIXES: &[&str] = &["LC_"];

/// Names only the dependency build steps get: uv's and pip's index, mirror,
/// proxy and TLS settings (pip installs uv when the machine has none). A
/// running plugin has no use for them.
const BUILD_ONLY: &[&str] = &[
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_INDEX_STRATEGY",
    "UV_KEYRING_PROVIDER",
    "UV_NATIVE_TLS",
    "UV_INSECURE_HOST",
    "UV_HTTP_TIMEOUT",
    "UV_CONCURRENT_DOWNLOADS",
    "UV_CONCURRENT_BUILDS",
    "UV_CONCURRENT_INSTALLS",
    "UV_LINK_MODE",
    "UV_OFFLINE",
    "UV_PYTHON_DOWNLOADS",
    "UV_PYTHON_INSTALL_MIRROR",
    "UV_PYPY_INSTALL_MIRROR",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_CONFIG_FILE",
    "PIP_PROXY",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_TIMEOUT",
    "PIP_RETRIES",
];

/// The environment allow-list, taken from the daemon's environment once at
/// start.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    /// Inherited names and their values, plus the operator's
    /// PLUGIN_ENV_PASSTHROUGH names.
    inherited: BTreeMap<String, String>,
    /// Build-step-only names and their values.
    build: BTreeMap<String, String>,
}

impl EnvPolicy {
    /// The allow-list over `vars` (normally `std::env::vars()`), with
    /// `passthrough` naming extra variables the operator passes on purpose.
    pub fn new<I>(vars: I, passthrough: &[String]) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut policy = Self::default();
        for (name, value) in vars {
            let inherited = INHERITED.contains(&name.as_str())
                || INHERITED_PREFIXES.iter().any(|p| name.starts_with(p))
                || passthrough.contains(&name);
            if inherited {
                policy.inherited.insert(name, value);
            } else if BUILD_ONLY.contains(&name.as_str()) {
                policy.build.insert(name, value);
            }
        }
        policy
    }

    /// From this process's environment.
    pub fn from_process(passthrough: &[String]) -> Self {
        Self::new(std::env::vars(), passthrough)
    }

    /// The environment of a running plugin: the allow-list, a fixed PATH led
    /// by the venv's `bin`, the plugin's own HOME and temp folder, and what
    /// the SDK reads (`dify_plugin/config/config.py`: INSTALL_METHOD; the
    /// timeouts keep their SDK defaults).
    pub fn plugin(&self, venv_bin: &Path, home: &Path, tmp: &Path) -> Vec<(String, String)> {
        let mut env = self.inherited.clone();
        env.insert(
            "PATH".into(),
            format!("{}:{SAFE_PATH}", venv_bin.to_string_lossy()),
        );
        let home = home.to_string_lossy().into_owned();
        let tmp = tmp.to_string_lossy().into_owned();
        env.insert("HOME".into(), home);
        for name in ["TMPDIR", "TMP", "TEMP"] {
            env.insert(name.into(), tmp.clone());
        }
        env.insert("INSTALL_METHOD".into(), "local".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        // The code folder is read-only and verified before each launch;
        // bytecode written next to it would be code that is not checked.
        env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
        if let Some(venv) = venv_bin.parent() {
            env.insert("VIRTUAL_ENV".into(), venv.to_string_lossy().into_owned());
        }
        env.into_iter().collect()
    }

    /// The environment of a uv or pip build step: the allow-list, uv's and
    /// pip's own settings, a fixed PATH and a HOME of the daemon's choosing.
    pub fn build(&self, home: &Path) -> Vec<(String, String)> {
        let mut env = self.inherited.clone();
        env.extend(self.build.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("PATH".into(), SAFE_PATH.into());
        env.insert("HOME".into(), home.to_string_lossy().into_owned());
        env.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [
            ("SERVER_KEY", "secret"),
            ("DIFY_INNER_API_KEY", "inner"),
            ("DB_PASSWORD", "pw"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
            ("PATH", "/root/private/bin:/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
            ("SSL_CERT_FILE", "/etc/ssl/proxy.pem"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("UV_INDEX_URL", "https://mirror/simple"),
            ("MY_PLUGIN_SETTING", "on"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_plugin_gets_the_allow_list_and_nothing_of_the_daemon() {
        let policy = EnvPolicy::new(vars(), &[]);
        let env: BTreeMap<_, _> = policy
            .plugin(
                Path::new("/p/.venv/bin"),
                Path::new("/d/home"),
                Path::new("/d/tmp"),
            )
            .into_iter()
            .collect();
        for secret in [
            "SERVER_KEY",
            "DIFY_INNER_API_KEY",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "UV_INDEX_URL",
            "MY_PLUGIN_SETTING",
        ] {
            assert!(!env.contains_key(secret), "{secret} leaked");
        }
        assert_eq!(env["PATH"], format!("/p/.venv/bin:{SAFE_PATH}"));
        assert_eq!(env["HOME"], "/d/home");
        assert_eq!(env["TMPDIR"], "/d/tmp");
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["LC_ALL"], "C.UTF-8");
        assert_eq!(env["SSL_CERT_FILE"], "/etc/ssl/proxy.pem");
        assert_eq!(env["HTTPS_PROXY"], "http://proxy:3128");
        assert_eq!(env["INSTALL_METHOD"], "local");
        assert_eq!(env["VIRTUAL_ENV"], "/p/.venv");
    }

    #[test]
    fn passthrough_names_are_added_on_purpose() {
        let policy = EnvPolicy::new(vars(), &["MY_PLUGIN_SETTING".to_owned()]);
        let env: BTreeMap<_, _> = policy
            .plugin(Path::new("/v/bin"), Path::new("/h"), Path::new("/t"))
            .into_iter()
            .collect();
        assert_eq!(env["MY_PLUGIN_SETTING"], "on");
        assert!(!env.contains_key("SERVER_KEY"));
    }

    #[test]
    fn build_steps_get_the_index_settings_but_no_secrets() {
        let policy = EnvPolicy::new(vars(), &[]);
        let env: BTreeMap<_, _> = policy.build(Path::new("/b")).into_iter().collect();
        assert_eq!(env["UV_INDEX_URL"], "https://mirror/simple");
        assert_eq!(env["SSL_CERT_FILE"], "/etc/ssl/proxy.pem");
        assert_eq!(env["PATH"], SAFE_PATH);
        assert_eq!(env["HOME"], "/b");
        assert!(!env.contains_key("SERVER_KEY"));
        assert!(!env.contains_key("DB_PASSWORD"));
    }
}
