//! The `--config-file`: settings the primary reads at start and again on every reload.
//!
//! A running process's environment cannot be changed from outside (systemd's `Environment=` is
//! read once, at start), so a rolling reload alone would start the new workers with the old
//! settings. The config file fixes that: it holds `KEY=VALUE` lines, in the syntax of systemd's
//! `EnvironmentFile=`, whose keys are environment variables: the cluster's `SIO_*` variables,
//! `RUST_LOG`, and any variable the app itself reads. On SIGHUP the primary reads it again and
//! starts the new workers with those variables.
//!
//! Precedence: a flag on the command line wins over the file, which wins over the process
//! environment.
//!
//! ```text
//! # /etc/myapp/cluster.env
//! SIO_PING_INTERVAL_MS=20000
//! SIO_DRAIN_TIMEOUT_MS=30000
//! RUST_LOG=info,myapp=debug
//! ```

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use crate::config::Config;

/// Errors of the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `KEY=VALUE`.
    #[error("{}:{line}: {reason} (expected KEY=VALUE, e.g. SIO_WORKERS=4)", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `SIO_*` key that is no setting of the cluster (a typo, most likely).
    #[error("{}:{line}: `{key}` is not a setting of the cluster{}", path.display(), did_you_mean(suggestion.as_deref()))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A value in the file is not valid for its setting.
    #[error("{}:{line}: {key}: {reason}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong with it (clap's message).
        reason: String,
    },
    /// The settings (command line + file + environment) do not form a valid configuration.
    #[error("the settings of {} are invalid: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// clap's or the validation's message.
        reason: String,
    },
}

/// The variables of a config file, in file order (a later line wins over an earlier one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    vars: Vec<(String, String)>,
    /// The line each variable was last set on (1-based).
    lines: std::collections::BTreeMap<String, usize>,
}

fn did_you_mean(s: Option<&str>) -> String {
    match s {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => " (see --help for the SIO_* variables)".into(),
    }
}

/// Edit distance between two keys (insertions, deletions, substitutions, adjacent swaps).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

impl EnvFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| ConfigFileError::Syntax {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses `KEY=VALUE` lines: blank lines and lines starting with `#` or `;` are skipped, an
    /// optional `export ` prefix is allowed, and a value may be wrapped in single or double
    /// quotes. Errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut lines = std::collections::BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err((i + 1, format!("`{line}` has no `=`")));
            };
            let key = key.trim();
            let valid_key = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_key {
                return Err((i + 1, format!("`{key}` is not a variable name")));
            }
            let value = value.trim();
            let value = match value.as_bytes() {
                [q @ (b'"' | b'\''), .., last] if last == q && value.len() >= 2 => {
                    &value[1..value.len() - 1]
                }
                [b'"' | b'\'', ..] => return Err((i + 1, "unterminated quote".into())),
                _ => value,
            };
            vars.retain(|(k, _)| k != key);
            vars.push((key.to_string(), value.to_string()));
            lines.insert(key.to_string(), i + 1);
        }
        Ok(Self { vars, lines })
    }

    /// The variables, to set in every worker's environment.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The line `key` was set on (1-based), if it is in the file.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The cluster configuration in effect with `file`: `args` (the process's arguments, without
/// the program name; arguments that are not the cluster's own are ignored) over the file over
/// the process environment.
pub fn effective_config(
    args: &[OsString],
    file: &EnvFile,
    path: &Path,
) -> Result<Config, ConfigFileError> {
    let invalid = |reason: String| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let cmd = Config::command();
    let mut argv: Vec<OsString> = vec![OsString::from("sio-cluster")];
    let mut given: Vec<String> = Vec::new();
    // The cluster's own flags from the command line. Every one of them takes a value, as
    // `--flag VALUE` or `--flag=VALUE`.
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str().and_then(|s| s.strip_prefix("--")) else {
            continue;
        };
        let (name, inline) = match s.split_once('=') {
            Some((n, _)) => (n, true),
            None => (s, false),
        };
        if let Some(a) = cmd.get_arguments().find(|a| a.get_long() == Some(name)) {
            given.push(name.to_string());
            argv.push(arg.clone());
            // Switches (`--proxy-protocol`) take no value: the next argument is another one.
            if !inline
                && a.get_action().takes_values()
                && let Some(v) = it.next()
            {
                argv.push(v.clone());
            }
        }
    }
    // Every SIO_* key of the file must be a setting: a typo would otherwise be ignored.
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env()?.to_str().map(str::to_owned))
        .collect();
    for (key, _) in file.vars() {
        if key.starts_with("SIO_") && !known.iter().any(|k| k == key) {
            let suggestion = known
                .iter()
                .map(|k| (distance(k, key), k))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, k)| k.clone());
            return Err(ConfigFileError::UnknownKey {
                path: path.to_path_buf(),
                line: file.line_of(key).unwrap_or(0),
                key: key.clone(),
                suggestion,
            });
        }
    }
    // Which flag each file value became, to name the key and line of a bad value.
    let mut from_file: Vec<(String, String)> = Vec::new();
    // The file's values for the flags not given on the command line.
    for a in cmd.get_arguments() {
        let (Some(long), Some(env)) = (a.get_long(), a.get_env()) else {
            continue;
        };
        if given.iter().any(|g| g == long) {
            continue;
        }
        let Some(key) = env.to_str() else { continue };
        if let Some(v) = file.get(key) {
            from_file.push((long.to_owned(), key.to_owned()));
            if a.get_action().takes_values() {
                let mut flag = OsString::from(format!("--{long}="));
                flag.push(OsStr::new(v));
                argv.push(flag);
            } else {
                // A switch: on for a true value (as clap reads it from the environment).
                match boolish(v) {
                    Some(true) => argv.push(OsString::from(format!("--{long}"))),
                    Some(false) => {}
                    None => {
                        return Err(ConfigFileError::Value {
                            path: path.to_path_buf(),
                            line: file.line_of(key).unwrap_or(0),
                            key: key.to_owned(),
                            reason: format!(
                                "`{v}` is not a yes/no value: use true or false (also 1/0, yes/no, on/off)"
                            ),
                        });
                    }
                }
            }
        }
    }
    let matches = cmd.try_get_matches_from(argv).map_err(|e| {
        // A value from the file: name its key and line.
        let arg = match e.get(clap::error::ContextKind::InvalidArg) {
            Some(clap::error::ContextValue::String(a)) => a.clone(),
            _ => String::new(),
        };
        let culprit = from_file.iter().find(|(long, _)| {
            arg.split([' ', '=', '<']).next() == Some(format!("--{long}").as_str())
        });
        match culprit {
            Some((_, key)) => ConfigFileError::Value {
                path: path.to_path_buf(),
                line: file.line_of(key).unwrap_or(0),
                key: key.clone(),
                reason: first_line(&e.to_string()),
            },
            None => invalid(e.render().to_string().trim().to_string()),
        }
    })?;
    let config = Config::from_arg_matches(&matches).map_err(|e| invalid(e.to_string()))?;
    config.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(config)
}

/// A switch's value as clap reads it from the environment (`BoolishValueParser`).
fn boolish(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The first line of a clap message, without its `error: ` prefix.
fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg).trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// What a reload does with the settings that changed in the config file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Settings that cannot change while the cluster runs without splitting it (workers on the
    /// old and new value would not see each other, or the primary would route by the old one):
    /// the reload is refused.
    pub refused: Vec<String>,
    /// Settings the primary reads only at start: kept as they are until a restart.
    pub kept: Vec<String>,
}

macro_rules! changed {
    ($old:expr, $new:expr, $out:expr; $($field:ident => $flag:literal),+ $(,)?) => {
        $(
            if $old.$field != $new.$field {
                $out.push(format!("{} ({:?} → {:?})", $flag, $old.$field, $new.$field));
            }
        )+
    };
}

impl ReloadPlan {
    /// Compares the configuration in effect with the one read for a reload. Everything not
    /// listed here applies: worker settings through the new workers, supervision timeouts and
    /// limits in the primary at once.
    pub fn new(old: &Config, new: &Config) -> Self {
        let mut plan = ReloadPlan::default();
        changed!(old, new, plan.refused;
            adapter => "--adapter",
            redis_prefix => "--redis-prefix",
            path => "--path",
            sticky_cookie => "--sticky-cookie",
            // Old and new workers would relay packets their clients cannot decode.
            parser => "--parser",
        );
        if old.tls().is_some() != new.tls().is_some() {
            // The primary checks the first byte for TLS or reads the head: one or the other.
            plan.refused.push(format!(
                "--tls-cert/--tls-key (TLS {} → {})",
                if old.tls().is_some() { "on" } else { "off" },
                if new.tls().is_some() { "on" } else { "off" }
            ));
        }
        if old.redis_url != new.redis_url {
            // Not printed: the URL may hold a password.
            plan.refused.push("--redis-url (changed)".into());
        }
        changed!(old, new, plan.kept;
            listen => "--listen",
            backlog => "--backlog",
            workers => "--workers",
            balance => "--balance",
            head_timeout_ms => "--head-timeout-ms",
            max_head_bytes => "--max-head-bytes",
            max_pending_heads => "--max-pending-heads",
            bus_queue_bytes => "--bus-queue-bytes",
            heartbeat_interval_ms => "--heartbeat-interval-ms",
            status_interval_ms => "--status-interval-ms",
            proxy_protocol => "--proxy-protocol",
            trusted_proxies => "--trusted-proxies",
            max_connections_per_worker => "--max-connections-per-worker",
            max_connections => "--max-connections",
            max_connections_per_ip => "--max-connections-per-ip",
            admin_listen => "--admin-listen",
            admin_listen_public => "--admin-listen-public",
            health_path => "--health-path",
        );
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_environment_file_syntax() {
        let f = EnvFile::parse(
            "# comment\n\n; other comment\nSIO_WORKERS=4\nexport RUST_LOG = \"info,app=debug\"\n\
             APP_NAME='my app'\nEMPTY=\nSIO_WORKERS=2\n",
        )
        .unwrap();
        assert_eq!(
            f.vars(),
            &[
                ("RUST_LOG".into(), "info,app=debug".into()),
                ("APP_NAME".into(), "my app".into()),
                ("EMPTY".into(), "".into()),
                ("SIO_WORKERS".into(), "2".into()),
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(EnvFile::parse("A=1\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(EnvFile::parse("1A=1").unwrap_err().0, 1);
        assert_eq!(EnvFile::parse("A B=1").unwrap_err().0, 1);
        assert_eq!(EnvFile::parse("A=\"open").unwrap_err().0, 1);
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let file =
            EnvFile::parse("SIO_WORKERS=3\nSIO_BALANCE=random\nSIO_PING_INTERVAL_MS=700").unwrap();
        let args = os(&[
            "--workers",
            "2",
            "--app-flag",
            "x",
            "--ping-interval-ms=900",
            "positional",
        ]);
        let c = effective_config(&args, &file, Path::new("f")).unwrap();
        assert_eq!(c.workers.resolve(), 2);
        assert_eq!(c.balance, crate::config::Balance::Random);
        assert_eq!(c.ping_interval_ms, Some(900));
    }

    #[test]
    fn bad_values_in_the_file_are_reported_with_the_file() {
        let file = EnvFile::parse("# settings\nSIO_BALANCE=random\nSIO_WORKERS=zero").unwrap();
        let e = effective_config(&[], &file, Path::new("/etc/app.env"))
            .unwrap_err()
            .to_string();
        // The key and line, not the flag it became.
        assert!(e.starts_with("/etc/app.env:3: SIO_WORKERS: "), "{e}");
        assert!(e.contains("auto"), "{e}");
        let file = EnvFile::parse("SIO_PROXY_PROTOCOL=maybe").unwrap();
        let e = effective_config(&[], &file, Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f:1: SIO_PROXY_PROTOCOL: "), "{e}");
        let file = EnvFile::parse("SIO_ADAPTER=redis").unwrap();
        let e = effective_config(&[], &file, Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--redis-url"), "{e}");
    }

    #[test]
    fn unknown_sio_keys_are_errors_with_a_suggestion() {
        let file = EnvFile::parse("APP_NAME=x\n\nSIO_WORKRES=1").unwrap();
        let e = effective_config(&[], &file, Path::new("f"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "f:3: `SIO_WORKRES` is not a setting of the cluster (did you mean `SIO_WORKERS`?)"
        );
        let file = EnvFile::parse("SIO_COMPLETELY_DIFFERENT=1").unwrap();
        let e = effective_config(&[], &file, Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("see --help"), "{e}");
        // The app's own variables are its business.
        let file = EnvFile::parse("APP_WORKRES=1").unwrap();
        effective_config(&[], &file, Path::new("f")).unwrap();
    }

    #[test]
    fn switches_from_the_file_and_the_command_line() {
        let file = EnvFile::parse("SIO_PROXY_PROTOCOL=true\nSIO_ADMIN_LISTEN_PUBLIC=0").unwrap();
        let c = effective_config(&[], &file, Path::new("f")).unwrap();
        assert!(c.proxy_protocol && !c.admin_listen_public);
        // A switch on the command line does not swallow the next flag.
        let file = EnvFile::default();
        let args = os(&["--proxy-protocol", "--workers", "3"]);
        let c = effective_config(&args, &file, Path::new("f")).unwrap();
        assert!(c.proxy_protocol);
        assert_eq!(c.workers.resolve(), 3);
    }

    #[test]
    fn reload_plan_sorts_changes() {
        let file = EnvFile::parse("SIO_WORKERS=2").unwrap();
        let old = effective_config(&[], &file, Path::new("f")).unwrap();
        let file = EnvFile::parse(
            "SIO_WORKERS=3\nSIO_REDIS_PREFIX=other\nSIO_PING_INTERVAL_MS=1000\nSIO_DRAIN_TIMEOUT_MS=1\n\
             SIO_PARSER=msgpack\nSIO_ACK_TIMEOUT_MS=900",
        )
        .unwrap();
        let new = effective_config(&[], &file, Path::new("f")).unwrap();
        assert_eq!(new.ack_timeout_ms, Some(900));
        let plan = ReloadPlan::new(&old, &new);
        assert_eq!(plan.refused.len(), 2, "{plan:?}");
        assert!(plan.refused[0].starts_with("--redis-prefix"));
        assert!(
            plan.refused[1].starts_with("--parser (Json → Msgpack)"),
            "{plan:?}"
        );
        assert_eq!(plan.kept.len(), 1, "{plan:?}");
        assert!(plan.kept[0].starts_with("--workers"));
        assert_eq!(ReloadPlan::new(&old, &old), ReloadPlan::default());
    }
}
