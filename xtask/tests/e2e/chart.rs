//! The chart, checked with the real helm binary of the test bed: lint,
//! render and parse (as YAML, not by string search), schema errors, and a
//! reviewed snapshot of the default rendering.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;
use testkit::TestBed;

fn chart() -> PathBuf {
    testkit::workspace_root().join("helm/colony")
}

fn example(name: &str) -> String {
    chart().join("examples").join(name).display().to_string()
}

/// Both Helm majors the chart supports, as (name, binary).
fn helms() -> [(&'static str, PathBuf); 2] {
    let bed = TestBed::get();
    [("helm 4", bed.helm.clone()), ("helm 3", bed.helm3.clone())]
}

/// Runs the real helm 4; returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    helm_with(&TestBed::get().helm, args)
}

fn helm_with(binary: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary).args(args).output().expect("helm runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `helm template <release>` with extra args, parsed into documents.
fn render(release: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        "colony-dev",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template failed: {stderr}");
    parse_documents(&stdout)
}

fn parse_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// The one resource of `kind` whose component label is `component`.
fn find<'a>(docs: &'a [Value], kind: &str, component: &str) -> &'a Value {
    let matches: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == kind && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "expected one {kind} for {component}, found {}",
        matches.len()
    );
    matches[0]
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

#[test]
fn lint_strict_passes_for_the_defaults_and_every_example_with_helm_3_and_4() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (version, binary) in helms() {
        let (ok, stdout, stderr) = helm_with(&binary, &["lint", "--strict", chart]);
        assert!(ok, "{version}, default values: {stdout}{stderr}");
        for name in [
            "homelab.yaml",
            "external-database.yaml",
            "other-release.yaml",
        ] {
            let (ok, stdout, stderr) =
                helm_with(&binary, &["lint", "--strict", chart, "-f", &example(name)]);
            assert!(ok, "{version}, {name}: {stdout}{stderr}");
        }
    }
}

#[test]
fn the_init_container_runs_the_migrations_with_the_backend_image() {
    let docs = render("colony", &[]);
    let backend = find(&docs, "Deployment", "backend");
    let pod = &backend["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "run-migrations");
    assert_eq!(
        init["image"], "colony-backend:0.1.0",
        "tag form without a digest"
    );
    assert_eq!(
        init["image"], pod["containers"][0]["image"],
        "same image as the backend"
    );
    assert_eq!(
        init["command"],
        serde_yaml_ng::from_str::<Value>("[/usr/local/bin/run-migrations]").unwrap()
    );
    let args: Vec<&str> = init["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(
        args,
        [
            "--wait-timeout=60",
            "--lock-timeout=300",
            "--ddl-lock-timeout=5",
            "--ddl-lock-retries=3",
            "--legacy-table=households",
            "--alembic-cmd=alembic"
        ]
    );
    assert_eq!(init["workingDir"], "/app");
    for container in [init, &pod["containers"][0]] {
        let env = &container["env"][0];
        assert_eq!(env["name"], "DATABASE_URL");
        assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "colony-database");
        assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "DATABASE_URL");
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert!(container["resources"]["limits"]["memory"].is_string());
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["containers"][0]["readinessProbe"]["httpGet"]["path"].is_string());

    // The chart-created secret holds the URL the init container reads.
    let secret = find(&docs, "Secret", "database");
    assert_eq!(secret["metadata"]["name"], "colony-database");
    let url = str_of(&secret["stringData"]["DATABASE_URL"]);
    assert!(
        url.starts_with("postgresql://colony:")
            && url.ends_with("@colony-database.colony-dev.svc:5432/colony"),
        "{url}"
    );
}

#[test]
fn a_digest_wins_over_the_tag_and_the_deploy_record_is_annotated() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = render(
        "colony",
        &[
            "--set-string",
            "backend.image.repository=127.0.0.1:5000/colony-backend",
            "--set-string",
            "backend.image.tag=0123456789ab",
            "--set-string",
            &format!("backend.image.digest={digest}"),
            "--set-string",
            "deployRecord.gitSha=0123456789abcdef",
            "--set-string",
            "deployRecord.alembicHead=0002_activity_and_comments",
            "--set-string",
            "deployRecord.backupFile=/backups/colony-dev-20261126T000000Z.dump",
        ],
    );
    let backend = find(&docs, "Deployment", "backend");
    let pinned = format!("127.0.0.1:5000/colony-backend@{digest}");
    assert_eq!(
        backend["spec"]["template"]["spec"]["initContainers"][0]["image"],
        pinned.as_str()
    );
    assert_eq!(
        backend["spec"]["template"]["spec"]["containers"][0]["image"],
        pinned.as_str()
    );
    let annotations = &backend["metadata"]["annotations"];
    assert_eq!(annotations["colony.dev/git-sha"], "0123456789abcdef");
    assert_eq!(
        annotations["colony.dev/alembic-head"],
        "0002_activity_and_comments"
    );
    assert_eq!(
        annotations["colony.dev/backup-file"],
        "/backups/colony-dev-20261126T000000Z.dump"
    );
    assert_eq!(annotations["colony.dev/backend-image"], pinned.as_str());
}

#[test]
fn labels_let_the_deploy_tool_find_each_workload_under_any_release_name() {
    let docs = render("household-staging", &["-f", &example("other-release.yaml")]);
    for (kind, component) in [("Deployment", "backend"), ("Deployment", "frontend")] {
        let workload = find(&docs, kind, component);
        assert_eq!(
            workload["metadata"]["name"],
            format!("household-staging-colony-{component}").as_str()
        );
        let selector = &workload["spec"]["selector"]["matchLabels"];
        assert_eq!(selector["app.kubernetes.io/instance"], "household-staging");
        assert_eq!(selector["app.kubernetes.io/component"], component);
        let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
        for (key, value) in selector.as_mapping().unwrap() {
            assert_eq!(
                &pod_labels[key], value,
                "pod template lacks selector label {key:?}"
            );
        }
    }
    // External database by URL: a secret, no StatefulSet.
    assert!(docs.iter().all(|d| d["kind"] != "StatefulSet"));
    let secret = find(&docs, "Secret", "database");
    assert_eq!(
        secret["stringData"]["DATABASE_URL"],
        "postgresql://colony@db.staging.svc:5432/colony"
    );
}

#[test]
fn the_in_chart_database_is_found_by_label_and_an_existing_secret_is_referenced() {
    let docs = render("colony", &["-f", &example("homelab.yaml")]);
    let database = find(&docs, "StatefulSet", "database");
    assert_eq!(
        database["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"],
        "colony"
    );
    assert_eq!(
        database["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let ingress: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Ingress").collect();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["spec"]["rules"][0]["host"], "colony.homelab.lan");
    assert_eq!(ingress[0]["spec"]["ingressClassName"], "traefik");

    let docs = render("colony", &["-f", &example("external-database.yaml")]);
    assert!(docs
        .iter()
        .all(|d| d["kind"] != "StatefulSet" && d["kind"] != "Secret"));
    let backend = find(&docs, "Deployment", "backend");
    let init = &backend["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        init["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "colony-db"
    );
    assert!(str_of(&init["image"]).contains("@sha256:"));
    let args: Vec<&str> = init["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        args.contains(&"--alembic-cmd=uv run alembic") && args.contains(&"--legacy-table=members"),
        "{args:?}"
    );
}

/// The homelab example's placement reaches each workload's pods (a mixed
/// amd64/arm64 cluster keeps single-arch images on amd64 nodes), with its
/// ServiceAccount, annotations, budget and /dev/shm; the defaults make no
/// budget and no ServiceAccount.
#[test]
fn placement_values_reach_every_pod_and_budgets_are_opt_in() {
    let docs = render("colony", &["-f", &example("homelab.yaml")]);
    let pod =
        |kind: &str, component: &str| find(&docs, kind, component)["spec"]["template"].clone();
    for component in ["backend", "frontend"] {
        let pod = pod("Deployment", component);
        assert_eq!(
            pod["spec"]["nodeSelector"]["kubernetes.io/arch"], "amd64",
            "{pod:?}"
        );
        assert_eq!(pod["spec"]["serviceAccountName"], "colony", "{pod:?}");
        assert_eq!(
            pod["spec"]["securityContext"]["runAsUser"], 10001,
            "{pod:?}"
        );
    }
    assert_eq!(
        pod("Deployment", "backend")["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let database = pod("StatefulSet", "database");
    assert_eq!(
        database["spec"]["nodeSelector"]["kubernetes.io/hostname"],
        "nas"
    );
    assert_eq!(database["spec"]["tolerations"][0]["value"], "storage");
    assert_eq!(database["spec"]["securityContext"]["fsGroup"], 999);
    let shm = database["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "shm")
        .expect("a /dev/shm volume");
    assert_eq!(
        shm["emptyDir"],
        serde_yaml_ng::from_str::<Value>("{medium: Memory, sizeLimit: 512Mi}").unwrap()
    );
    let budget = find(&docs, "PodDisruptionBudget", "backend");
    assert_eq!(budget["spec"]["maxUnavailable"], 1, "{budget:?}");
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "backend"
    );
    let account = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .expect("a ServiceAccount");
    assert_eq!(account["metadata"]["name"], "colony");
    assert_eq!(account["automountServiceAccountToken"], false);

    let defaults = render("colony", &[]);
    for kind in ["PodDisruptionBudget", "ServiceAccount"] {
        assert!(
            !defaults.iter().any(|d| d["kind"] == kind),
            "{kind} by default"
        );
    }
    let backend = find(&defaults, "Deployment", "backend");
    assert!(backend["spec"]["template"]["spec"]
        .get("serviceAccountName")
        .is_none());
}

#[test]
fn bad_values_fail_with_the_schema_message() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // (values, Helm 4's message, Helm 3's message)
    let cases = [
        (
            "backend.image.tag=15",
            "at '/backend/image/tag': got number, want string",
            "backend.image.tag: Invalid type. Expected: string, given: integer",
        ),
        (
            "backend.replicaz=2",
            "at '/backend': additional properties 'replicaz' not allowed",
            "backend: Additional property replicaz is not allowed",
        ),
        (
            "backend.image.repository=null",
            "at '/backend/image': missing property 'repository'",
            "backend.image: repository is required",
        ),
        (
            "backend.nodeSelector.arch=1",
            "at '/backend/nodeSelector/arch': got number, want string",
            "backend.nodeSelector.arch: Invalid type. Expected: string, given: integer",
        ),
        (
            "frontend.podDisruptionBudget.minAvailable=1,frontend.podDisruptionBudget.maxUnavailable=1",
            "at '/frontend/podDisruptionBudget': 'not' failed",
            "frontend.podDisruptionBudget: Must not validate the schema (not)",
        ),
        (
            "database.mode=cloud",
            "at '/database/mode'",
            "database.mode must be one of the following",
        ),
        (
            "database.mode=external",
            "at '/database/existingSecret': minLength: got 0, want 1",
            "database.existingSecret: String length must be greater than or equal to 1",
        ),
    ];
    for ((version, binary), pick) in helms().into_iter().zip([0, 1]) {
        for case in &cases {
            let message = if pick == 0 { case.1 } else { case.2 };
            for command in [vec!["template", chart], vec!["lint", "--strict", chart]] {
                let mut args = command.clone();
                args.extend(["--set", case.0]);
                let (ok, stdout, stderr) = helm_with(&binary, &args);
                assert!(!ok, "{version} {} accepted {}", command[0], case.0);
                assert!(
                    format!("{stdout}{stderr}").contains(message),
                    "{version} {} {}: {stdout}{stderr}",
                    command[0],
                    case.0
                );
            }
        }
    }
}

#[test]
fn the_default_rendering_matches_the_reviewed_snapshot_with_helm_3_and_4() {
    let chart = chart();
    for (version, binary) in helms() {
        let (ok, stdout, stderr) = helm_with(
            &binary,
            &[
                "template",
                "colony",
                chart.to_str().unwrap(),
                "--namespace",
                "colony-dev",
            ],
        );
        assert!(ok, "{version}: {stderr}");
        // The generated database password is random on each render.
        let docs = parse_documents(&stdout);
        let password =
            str_of(&find(&docs, "Secret", "database")["stringData"]["POSTGRES_PASSWORD"])
                .to_string();
        assert_eq!(password.len(), 32);
        common::assert_snapshot(
            "chart-default",
            &stdout.replace(&password, "<generated password>"),
        );
    }
}

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const DIGEST_C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// The chart rendered to a file, as `helm template` prints it.
fn render_to_file(dir: &std::path::Path, name: &str, extra: &[&str]) -> PathBuf {
    let chart = chart();
    let mut args = vec![
        "template",
        "colony",
        chart.to_str().unwrap(),
        "--namespace",
        "colony-dev",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {extra:?} failed: {stderr}");
    let path = dir.join(name);
    std::fs::write(&path, stdout).unwrap();
    path
}

/// The defaults and every example render objects that Kubernetes 1.33's
/// schemas accept strictly (no unknown field, no wrong type).
#[test]
fn every_rendering_passes_strict_schema_validation_for_kubernetes_1_33() {
    let dir = tempfile::tempdir().unwrap();
    let required = [
        "--set",
        "backend.image.repository=r/b",
        "--set",
        "frontend.image.repository=r/f",
    ];
    let mut files = vec![
        render_to_file(dir.path(), "defaults.yaml", &required),
        render_to_file(
            dir.path(),
            "network-policies.yaml",
            &[
                &required[..],
                &[
                    "--set",
                    "networkPolicy.enabled=true",
                    "--set",
                    "ingress.enabled=true",
                ],
            ]
            .concat(),
        ),
    ];
    for example in [
        "homelab.yaml",
        "external-database.yaml",
        "other-release.yaml",
    ] {
        let path = self::example(example);
        files.push(render_to_file(dir.path(), example, &["-f", &path]));
    }
    for file in &files {
        let output = Command::new(&TestBed::get().kubernetes_validate)
            .args(["-k", "1.33.0", "--strict", "--quiet"])
            .arg(file)
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            output.status.success(),
            "{} fails strict validation for 1.33:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// checkov's Kubernetes policies on the hardened rendering (digests, network
/// policies): every failure is in the reviewed allow-list, and every entry of
/// the allow-list still fails (a fixed one must leave the list).
#[test]
fn the_policy_checker_finds_only_the_reviewed_exceptions() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("backend.image.digest={DIGEST_A}");
    let frontend = format!("frontend.image.digest={DIGEST_B}");
    let database = format!("database.internal.image.digest={DIGEST_C}");
    let rendered = render_to_file(
        dir.path(),
        "hardened.yaml",
        &[
            "--set",
            "backend.image.repository=registry.example/colony-backend",
            "--set",
            &backend,
            "--set",
            "frontend.image.repository=registry.example/colony-frontend",
            "--set",
            &frontend,
            "--set",
            &database,
            "--set",
            "networkPolicy.enabled=true",
        ],
    );
    let output = Command::new(&TestBed::get().checkov)
        .args([
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "-f",
        ])
        .arg(&rendered)
        .output()
        .expect("checkov runs");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report = if report.is_array() {
        report[0].clone()
    } else {
        report
    };
    assert!(
        report["summary"]["passed"].as_u64().unwrap() > 200,
        "{}",
        report["summary"]
    );

    // A failed check as "CHECK KIND/component".
    let failed: std::collections::BTreeSet<String> = report["results"]["failed_checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| {
            let resource = check["resource"].as_str().unwrap();
            let kind = resource.split('.').next().unwrap();
            let component = resource
                .rsplit("app.kubernetes.io/component-")
                .next()
                .filter(|_| resource.contains("app.kubernetes.io/component-"))
                .unwrap_or_else(|| {
                    resource
                        .split('.')
                        .nth(2)
                        .unwrap()
                        .trim_start_matches("colony-")
                });
            format!("{} {kind}/{component}", check["check_id"].as_str().unwrap())
        })
        .collect();
    let allowed: std::collections::BTreeSet<String> =
        std::fs::read_to_string(chart().join("policy-allowlist.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
    let unexpected: Vec<&String> = failed.difference(&allowed).collect();
    assert!(
        unexpected.is_empty(),
        "new policy failures (fix them, or review and list them): {unexpected:#?}"
    );
    let stale: Vec<&String> = allowed.difference(&failed).collect();
    assert!(
        stale.is_empty(),
        "allow-list entries that pass now (remove them): {stale:#?}"
    );
    for fixed in ["CKV_K8S_38", "CKV_K8S_8", "CKV_K8S_43"] {
        assert!(
            !failed.iter().any(|f| f.starts_with(&format!("{fixed} "))),
            "{fixed} fails: {failed:#?}"
        );
    }
}
