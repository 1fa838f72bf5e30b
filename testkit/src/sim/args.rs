//! Command-line parsing shared by the simulated `helm` and `kubectl`, and the
//! check that the real tools accept the same arguments.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use super::state::{Config, Dir};

/// Flags and positional arguments, as a Go CLI (cobra/pflag) reads them.
#[derive(Debug, Default)]
pub struct Parsed {
    pub positional: Vec<String>,
    /// Every value of each flag, in order (`-f a -f b`).
    pub flags: BTreeMap<String, Vec<String>>,
    /// After `--` (kubectl exec).
    pub command: Vec<String>,
}

impl Parsed {
    pub fn value(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|n| self.flags.get(*n).and_then(|v| v.last().cloned()))
    }

    pub fn values(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .flat_map(|n| self.flags.get(*n).cloned().unwrap_or_default())
            .collect()
    }

    pub fn has(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.flags.contains_key(*n))
    }
}

/// `takes_value`: flags that consume the next argument when not written `--x=v`.
pub fn parse(argv: &[String], takes_value: &[&str]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            parsed.command = args.cloned().collect();
            break;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let value = match inline {
                Some(value) => value,
                None if takes_value.contains(&name.as_str()) => {
                    args.next().cloned().unwrap_or_default()
                }
                None => String::new(),
            };
            parsed.flags.entry(name).or_default().push(value);
        } else {
            parsed.positional.push(arg.clone());
        }
    }
    parsed
}

/// Writes the kubeconfig the real tools are pointed at: the simulated
/// context, on an API server port where nothing listens.
pub fn write_kubeconfig(dir: &Dir, config: &Config) {
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {ctx}\n\
         clusters:\n- name: sim\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
         contexts:\n- name: {ctx}\n  context:\n    cluster: sim\n    user: sim\n\
         users:\n- name: sim\n  user:\n    token: sim\n",
        ctx = config.context,
        port = config.closed_port
    );
    std::fs::write(dir.root.join("kubeconfig"), text).expect("write kubeconfig");
}

/// Runs the real tool with the same arguments against the unreachable API
/// server: a connection error means the arguments parsed; anything else
/// (unknown flag, missing argument…) is what a user would have seen.
pub fn check_with_real_tool(
    dir: &Dir,
    real: &std::path::Path,
    tool: &str,
    argv: &[String],
) -> Result<(), String> {
    let mut command = Command::new(real);
    if tool == "kubectl" {
        command.arg("--request-timeout=5s");
    }
    let output = command
        .args(argv)
        .env("KUBECONFIG", dir.root.join("kubeconfig"))
        .env("HOME", &dir.root)
        .env_remove("HELM_KUBECONTEXT")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the real {tool}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let reached_network = [
        "connection refused",
        "connect: connection",
        "cluster unreachable",
        "dial tcp",
        "was refused",
    ]
    .iter()
    .any(|marker| text.contains(marker));
    if output.status.success() || reached_network {
        Ok(())
    } else {
        Err(format!(
            "the real {tool} rejects these arguments {argv:?}:\n{}",
            text.trim()
        ))
    }
}

/// Go durations as Helm takes them: `10m`, `90s`, `1h30m`, `5m0s`.
pub fn duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        total += value
            * match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return None,
            };
    }
    if !number.is_empty() {
        return None;
    }
    Some(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_pflag() {
        let argv: Vec<String> = [
            "upgrade",
            "--install",
            "colony",
            "./c",
            "-n",
            "ns",
            "-f",
            "a.yaml",
            "-f",
            "b.yaml",
            "--wait=watcher",
            "--",
            "x",
        ]
        .map(String::from)
        .to_vec();
        let parsed = parse(&argv, &["-n", "-f"]);
        assert_eq!(parsed.positional, ["upgrade", "colony", "./c"]);
        assert_eq!(parsed.values(&["-f"]), ["a.yaml", "b.yaml"]);
        assert_eq!(parsed.value(&["--wait"]).as_deref(), Some("watcher"));
        assert!(parsed.has(&["--install"]));
        assert_eq!(parsed.command, ["x"]);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("10m").unwrap().as_secs(), 600);
        assert_eq!(duration("1h30m").unwrap().as_secs(), 5400);
        assert!(duration("10").is_none());
    }
}
