//! The environment's `hook` (deploy.toml): a command run after every
//! deploy and rollback that got past its configuration, whatever the
//! outcome (succeeded, nothing to do, refused, failed, interrupted), with
//! what happened as `COLONY_EVENT_*` variables, so a team can post to its
//! chat or append to a log. Its failure is reported and changes nothing
//! of the command's own exit status. A dry run runs no hook.

use std::time::Instant;

use crate::config::Environment;

/// What a command did, gathered as it goes.
pub struct Event {
    started: Instant,
    fields: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(command: &str, env: &Environment) -> Event {
        let mut event = Event {
            started: Instant::now(),
            fields: Vec::new(),
        };
        event.set("COMMAND", command);
        event.set("ENVIRONMENT", &env.name);
        event.set("NAMESPACE", &env.namespace);
        event.set("RELEASE", &env.release);
        event.set("USER", &crate::cluster::lock::this_identity());
        event
    }

    /// `COLONY_EVENT_<key>`; a later value replaces an earlier one.
    pub fn set(&mut self, key: &'static str, value: &str) {
        self.fields.retain(|(k, _)| *k != key);
        self.fields.push((key, value.to_string()));
    }

    /// Every variable the hook gets, the outcome from the command's result.
    /// Pure but for the clock.
    pub fn variables(&self, result: &anyhow::Result<()>) -> Vec<(String, String)> {
        let (outcome, message) = match result {
            Ok(()) => (self.value("OUTCOME").unwrap_or("succeeded"), String::new()),
            Err(error) => {
                let outcome = match crate::error::exit_code(error) {
                    2 => "refused",
                    130 | 143 => "interrupted",
                    _ => "failed",
                };
                let text = backend_migrations::redact::mask_all(&format!("{error:#}"));
                (outcome, text.lines().next().unwrap_or_default().to_string())
            }
        };
        let mut variables: Vec<(String, String)> = self
            .fields
            .iter()
            .filter(|(k, _)| *k != "OUTCOME")
            .map(|(k, v)| (format!("COLONY_EVENT_{k}"), v.clone()))
            .collect();
        variables.push(("COLONY_EVENT_OUTCOME".into(), outcome.into()));
        variables.push(("COLONY_EVENT_MESSAGE".into(), message));
        variables.push((
            "COLONY_EVENT_SECONDS".into(),
            format!("{:.1}", self.started.elapsed().as_secs_f64()),
        ));
        variables
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs the environment's hook, if it has one, for `result`.
pub fn after(env: &Environment, event: &Event, result: &anyhow::Result<()>) {
    let Some(argv) = &env.hook else {
        return;
    };
    let expression = event
        .variables(result)
        .into_iter()
        .fold(duct::cmd(&argv[0], &argv[1..]), |e, (k, v)| e.env(k, v))
        .dir(&env.root)
        .stdin_null()
        .stdout_to_stderr()
        .stderr_capture()
        .unchecked();
    let shown = crate::process::display_argv(argv);
    match expression.run() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!(
                "hook: `{shown}` exited {}: {} (the {} itself is not affected)",
                output.status.code().unwrap_or(-1),
                backend_migrations::redact::mask_all(stderr.trim().lines().last().unwrap_or("")),
                event.value("COMMAND").unwrap_or("command")
            );
        }
        Err(e) => eprintln!(
            "hook: `{shown}` could not run: {e} (the {} itself is not affected)",
            event.value("COMMAND").unwrap_or("command")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_comes_from_the_result_and_later_values_win() {
        let env = crate::config::tests::environment();
        let mut event = Event::new("deploy", &env);
        event.set("HELM_REVISION", "3");
        event.set("HELM_REVISION", "4");
        let ok = event.variables(&Ok(()));
        let get = |vars: &[(String, String)], key: &str| {
            vars.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get(&ok, "COLONY_EVENT_OUTCOME"), "succeeded");
        assert_eq!(get(&ok, "COLONY_EVENT_HELM_REVISION"), "4");
        assert_eq!(get(&ok, "COLONY_EVENT_ENVIRONMENT"), "colony-dev");
        event.set("OUTCOME", "nothing to deploy");
        assert_eq!(
            get(&event.variables(&Ok(())), "COLONY_EVENT_OUTCOME"),
            "nothing to deploy"
        );
        let refused = event.variables(&Err(crate::error::input_error(
            "cannot deploy: postgresql://u:secret@db/x unreachable\nsecond line",
        )));
        assert_eq!(get(&refused, "COLONY_EVENT_OUTCOME"), "refused");
        let message = get(&refused, "COLONY_EVENT_MESSAGE");
        assert!(
            !message.contains("secret") && !message.contains("second line"),
            "{message}"
        );
        let failed = event.variables(&Err(anyhow::anyhow!("helm failed")));
        assert_eq!(get(&failed, "COLONY_EVENT_OUTCOME"), "failed");
    }
}
