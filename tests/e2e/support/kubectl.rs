//! Running kubectl against the test API server, capturing what a user sees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context, bail};
use serde_json::Value;

/// Requests kubectl gives up on (the server is local; anything slower is a hang).
const REQUEST_TIMEOUT: &str = "30s";
/// Turns off kubectl's user preferences (`~/.kube/kuberc`, on by default
/// since 1.34), whose aliases and default flags (`apply --server-side`,
/// `delete --interactive`) would change what the scenarios see; both
/// spellings, as kubectl documents them. Older releases ignore them.
const NO_KUBERC: [(&str, &str); 2] = [("KUBECTL_KUBERC", "false"), ("KUBERC", "off")];

/// kubectl bound to one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

/// The outcome of one kubectl run.
#[derive(Debug, Clone)]
pub struct Output {
    /// The arguments, for messages.
    pub command: String,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Whether kubectl exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout when it succeeded; otherwise an error with everything it printed.
    pub fn ok(self) -> anyhow::Result<String> {
        if self.success() { Ok(self.stdout) } else { bail!("{}", self.describe()) }
    }

    /// Whether the server answered NotFound.
    pub fn not_found(&self) -> bool {
        !self.success() && self.stderr.contains("(NotFound)")
    }

    /// The command, its exit and its output, for failure messages.
    pub fn describe(&self) -> String {
        let code = self.code.map_or_else(|| "a signal".to_owned(), |code| format!("exit code {code}"));
        format!(
            "`{}` ended with {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

impl Kubectl {
    /// kubectl at `binary`, using `kubeconfig`, keeping its discovery cache in
    /// `cache_dir` (not the user's ~/.kube).
    pub fn new(binary: &Path, kubeconfig: &Path, cache_dir: &Path) -> Self {
        Self { binary: binary.to_path_buf(), kubeconfig: kubeconfig.to_path_buf(), cache_dir: cache_dir.to_path_buf() }
    }

    /// Runs `kubectl <args>`; only failing to start kubectl is an error.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run_with_input(args, None)
    }

    /// Runs `kubectl <args>` with `input` on stdin (for `-f -`).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<Output> {
        let full = self.full_args(args);
        let command = format!("kubectl {}", args.join(" "));
        let mut child = Command::new(&self.binary)
            .args(&full)
            .envs(NO_KUBERC)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        // Feed stdin from another thread so a large input cannot deadlock
        // against kubectl filling its output pipes.
        let output = thread::scope(|scope| {
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                scope.spawn(move || {
                    // kubectl reports a short read itself; nothing to add here.
                    let _ = stdin.write_all(text.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .with_context(|| format!("waiting for `{command}`"))?;
        Ok(Output {
            command,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs and returns stdout, failing with the full output otherwise.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run(args)?.ok()
    }

    /// `kubectl apply -f -` of one object or list (JSON).
    pub fn apply(&self, object: &Value, extra: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        self.run_with_input(&args, Some(&object.to_string()))
    }

    /// `kubectl create -f -` of one object or list (JSON).
    pub fn create(&self, object: &Value, extra: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["create", "-f", "-"];
        args.extend_from_slice(extra);
        self.run_with_input(&args, Some(&object.to_string()))
    }

    /// `kubectl get <resource> <name> -n <ns> -o json`; `None` when NotFound.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let output = self.run(&["get", resource, name, "-n", namespace, "-o", "json"])?;
        if output.not_found() {
            return Ok(None);
        }
        let stdout = output.ok()?;
        let object = serde_json::from_str(&stdout)
            .with_context(|| format!("kubectl printed something other than JSON: {stdout}"))?;
        Ok(Some(object))
    }

    fn full_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--cache-dir={}", self.cache_dir.display()),
            format!("--request-timeout={REQUEST_TIMEOUT}"),
        ];
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        full
    }
}

/// Splits `kubectl get` table output into rows of cells (header first).
/// Cells never contain spaces in the tables the suite reads.
pub fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A fake kubectl that prints its arguments and echoes stdin, and fails
    /// like kubectl does for `get nope`.
    fn fake_kubectl(dir: &Path) -> PathBuf {
        let path = dir.join("kubectl");
        fs::write(
            &path,
            "#!/bin/sh\n\
             for a in \"$@\"; do echo \"arg:$a\"; done\n\
             case \"$*\" in *' get nope '*) echo 'Error from server (NotFound): nope \"x\" not found' >&2; exit 1;; esac\n\
             case \"$*\" in *' -f -'*) cat;; esac\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn every_call_names_the_kubeconfig_cache_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let kubectl =
            Kubectl::new(&fake_kubectl(dir.path()), Path::new("/e2e/admin.kubeconfig"), Path::new("/e2e/cache"));
        let out = kubectl.ok(&["get", "ns"]).unwrap();
        assert_eq!(
            out,
            "arg:--kubeconfig=/e2e/admin.kubeconfig\narg:--cache-dir=/e2e/cache\n\
             arg:--request-timeout=30s\narg:get\narg:ns\n"
        );
    }

    #[test]
    fn user_preferences_are_switched_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubectl");
        fs::write(&path, "#!/bin/sh\necho \"$KUBECTL_KUBERC $KUBERC\"\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let kubectl = Kubectl::new(&path, Path::new("k"), Path::new("c"));
        assert_eq!(kubectl.ok(&["version"]).unwrap(), "false off\n");
    }

    #[test]
    fn input_reaches_stdin_even_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let kubectl = Kubectl::new(&fake_kubectl(dir.path()), Path::new("k"), Path::new("c"));
        let big = Value::String("x".repeat(1 << 20));
        let out = kubectl.apply(&big, &["--dry-run=server"]).unwrap();
        assert!(out.success());
        assert!(out.stdout.contains("arg:--dry-run=server\n"));
        assert!(out.stdout.ends_with(&big.to_string()));
    }

    #[test]
    fn not_found_is_none_and_other_failures_describe_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let kubectl = Kubectl::new(&fake_kubectl(dir.path()), Path::new("k"), Path::new("c"));
        assert!(kubectl.get("nope", "ns", "x").unwrap().is_none());

        let failed = kubectl.run(&["get", "nope", "x"]).unwrap();
        assert_eq!(failed.code, Some(1));
        let message = failed.ok().unwrap_err().to_string();
        assert!(message.starts_with("`kubectl get nope x` ended with exit code 1"), "{message}");
        assert!(message.contains("(NotFound)"), "{message}");
    }

    #[test]
    fn tables_split_into_cells() {
        let text = "NAME     REPLICAS   READY   STATUS             AGE\n\
                    orders   3          3       AllReplicasReady   12s\n\n";
        assert_eq!(
            table(text),
            vec![
                vec!["NAME", "REPLICAS", "READY", "STATUS", "AGE"],
                vec!["orders", "3", "3", "AllReplicasReady", "12s"],
            ]
        );
    }
}
