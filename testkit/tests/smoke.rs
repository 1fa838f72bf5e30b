//! The test bed answers: later tests start from a bed known to be good.
//! Each check talks to the real service; a missing one fails loudly.

use std::process::Command;

use testkit::TestBed;

fn output_of(program: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test]
async fn the_docker_daemon_answers_a_ping() {
    let bed = TestBed::get();
    let docker = bollard::Docker::connect_with_unix(
        bed.docker_host.trim_start_matches("unix://"),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("a Docker client");
    let docker = docker
        .negotiate_version()
        .await
        .expect("the daemon negotiates an API version");
    assert_eq!(
        docker.ping().await.expect("the daemon answers /_ping"),
        "OK"
    );
    let version = docker
        .version()
        .await
        .expect("the daemon reports its version");
    assert!(version.api_version.is_some(), "{version:?}");
}

#[test]
fn the_registry_answers_the_v2_api() {
    let bed = TestBed::get();
    let url = format!("http://{}/v2/", bed.registry);
    let response = ureq::get(&url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(response.status().as_u16(), 200);
    let version_header = response.headers().get("Docker-Distribution-Api-Version");
    assert_eq!(
        version_header.and_then(|v| v.to_str().ok()),
        Some("registry/2.0")
    );
}

#[test]
fn postgres_answers_select_1() {
    let bed = TestBed::get();
    let url = format!("{}/postgres", bed.database_url_base);
    let answer = output_of(
        std::path::Path::new("psql"),
        &[&url, "-XAtc", "SELECT 1"],
        &[],
    );
    assert_eq!(answer, "1");
}

#[test]
fn alembic_helm_and_kubectl_are_the_expected_versions() {
    let bed = TestBed::get();
    let alembic = output_of(&bed.alembic, &["--version"], &[]);
    assert!(alembic.starts_with("alembic "), "{alembic}");
    let helm = output_of(&bed.helm, &["version", "--template", "{{.Version}}"], &[]);
    assert!(helm.starts_with("v4."), "{helm}");
    let kubectl = output_of(&bed.kubectl, &["version", "--client", "-o", "json"], &[]);
    assert!(kubectl.contains("\"gitVersion\": \"v1.33."), "{kubectl}");
}
