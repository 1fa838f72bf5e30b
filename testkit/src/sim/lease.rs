//! `kubectl create|replace -f FILE`, `get lease` and `delete lease` for
//! Leases (coordination.k8s.io/v1), as the API server answers them: create
//! refuses a name that exists (AlreadyExists), replace refuses a stale
//! `metadata.resourceVersion` (Conflict), every write gets a new
//! resourceVersion. Only Leases: the tool writes nothing else this way.

use serde_json::Value;

use super::args::Parsed;
use super::state::{now_ms, timestamp, Dir};

const RESOURCE: &str = "leases.coordination.k8s.io";

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The object in `-f FILE` (YAML or JSON), checked to be a Lease, with
/// the file's path and the object's name; its namespace defaults to `-n`'s.
fn read_file(parsed: &Parsed, namespace: &str) -> Result<(String, String, Value), String> {
    let file = parsed
        .value(&["-f", "--filename"])
        .ok_or("error: must specify one of -f and -k")?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("error: the path \"{file}\" cannot be read: {e}"))?;
    let mut object: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("error: error parsing {file}: {e}"))?;
    if object["apiVersion"] != "coordination.k8s.io/v1" || object["kind"] != "Lease" {
        return Err(format!(
            "error: the simulated cluster creates and replaces Leases only, not {} {}",
            object["apiVersion"], object["kind"]
        ));
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err(format!(
            "error: error when creating \"{file}\": resource name may not be empty"
        ));
    }
    let own = object["metadata"]["namespace"].as_str().map(String::from);
    match own {
        Some(other) if other != namespace => {
            return Err(format!(
                "error: the namespace from the provided object \"{other}\" does not match the namespace \"{namespace}\". You must pass '--namespace={other}' to perform this operation."
            ))
        }
        _ => object["metadata"]["namespace"] = Value::from(namespace),
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((file, name, object))
}

pub fn create(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let (file, name, mut object) = read_file(parsed, namespace)?;
    dir.update(|state| {
        let key = key(namespace, &name);
        if state.leases.contains_key(&key) {
            return Err(format!(
                "Error from server (AlreadyExists): error when creating \"{file}\": {RESOURCE} \"{name}\" already exists"
            ));
        }
        state.clock += 1;
        object["metadata"]["resourceVersion"] = Value::from(state.clock.to_string());
        object["metadata"]["creationTimestamp"] = Value::from(timestamp(now_ms()));
        state.leases.insert(key, object);
        Ok(())
    })?;
    println!("lease.coordination.k8s.io/{name} created");
    Ok(())
}

pub fn replace(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let (file, name, mut object) = read_file(parsed, namespace)?;
    dir.update(|state| {
        let key = key(namespace, &name);
        let Some(stored) = state.leases.get(&key) else {
            return Err(format!(
                "Error from server (NotFound): error when replacing \"{file}\": {RESOURCE} \"{name}\" not found"
            ));
        };
        let current = stored["metadata"]["resourceVersion"].clone();
        match object["metadata"]["resourceVersion"].as_str() {
            Some(sent) if current.as_str() != Some(sent) => {
                return Err(format!(
                    "Error from server (Conflict): error when replacing \"{file}\": Operation cannot be fulfilled on {RESOURCE} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ));
            }
            _ => {}
        }
        object["metadata"]["creationTimestamp"] = stored["metadata"]["creationTimestamp"].clone();
        state.clock += 1;
        object["metadata"]["resourceVersion"] = Value::from(state.clock.to_string());
        state.leases.insert(key, object);
        Ok(())
    })?;
    println!("lease.coordination.k8s.io/{name} replaced");
    Ok(())
}

pub fn delete(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let name = parsed
        .positional
        .get(2)
        .cloned()
        .ok_or("error: resource(s) were provided, but no name was specified")?;
    dir.update(|state| {
        state
            .leases
            .remove(&key(namespace, &name))
            .map(|_| ())
            .ok_or_else(|| format!("Error from server (NotFound): {RESOURCE} \"{name}\" not found"))
    })?;
    println!("lease.coordination.k8s.io \"{name}\" deleted");
    Ok(())
}

/// `kubectl get lease[s] [NAME]`: the stored objects of `namespace`.
pub fn list(
    state: &super::state::State,
    namespace: &str,
    name: Option<&str>,
) -> Vec<(String, Value)> {
    state
        .leases
        .iter()
        .filter(|(k, _)| {
            k.split_once('/')
                .is_some_and(|(ns, n)| ns == namespace && name.is_none_or(|w| w == n))
        })
        .map(|(k, v)| {
            (
                k.split_once('/').map_or(k.clone(), |(_, n)| n.to_string()),
                v.clone(),
            )
        })
        .collect()
}
