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

/// Two beds on one machine (two BED_DIRs) share the hosts file: `down` of
/// one removes only the lines it added, never the other's.
#[test]
fn a_bed_s_down_removes_only_its_own_hosts_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bed = dir.path().join("bed");
    std::fs::create_dir(&bed).unwrap();
    let hosts = dir.path().join("hosts");
    let other = "# colony-test-bed /tmp/another-bed";
    let own = format!("# colony-test-bed {}", bed.display());
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n\
             127.0.0.1 registry.colony-bed.test {other}\n::1 secure-registry.colony-bed.test {other}\n\
             127.0.0.1 registry.colony-bed.test {own}\n::1 secure-registry.colony-bed.test {own}\n"
        ),
    )
    .unwrap();
    let script = testkit::workspace_root().join("scripts/test-bed.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("down")
        .env("COLONY_TEST_BED_DIR", &bed)
        .env("COLONY_TEST_HOSTS_FILE", &hosts)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        format!(
            "127.0.0.1 localhost\n\
             127.0.0.1 registry.colony-bed.test {other}\n::1 secure-registry.colony-bed.test {other}\n"
        )
    );
}
