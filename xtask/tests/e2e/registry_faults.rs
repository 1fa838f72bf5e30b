//! Pushes through a registry that fails on purpose (`testkit::registry_proxy`
//! in front of the bed's real registry): a transient answer is tried again,
//! a refusal is not, and two pushes of one commit at once end with one digest.

use crate::common::{assert_contains, Run};
use crate::images::{images, manifest, repo_named, reports, repository};
use testkit::registry_proxy::{Fault, RegistryProxy, RACING_PUSH_ANSWER};
use testkit::{ColonyRepo, TestBed};

fn push(repo: &ColonyRepo, registry: &str) -> Run {
    images(repo, "push", registry, &[])
}

/// The frontend's manifest upload answered `status` + `body`, `times` times.
fn frontend_manifest_fault(status: u16, body: &str, times: usize) -> Fault {
    Fault {
        method: "PUT",
        path_contains: "-frontend/manifests/",
        status,
        body: body.to_string(),
        times,
    }
}

/// The digest each image was pinned by, from `push --json`.
/// (component, tag) of each image a run reports.
fn tags(run: &Run) -> Vec<(String, String)> {
    reports(run)
        .iter()
        .map(|r| {
            (
                r["component"].as_str().unwrap().to_string(),
                r["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn digests(run: &Run) -> Vec<(String, String)> {
    reports(run)
        .iter()
        .map(|r| {
            (
                r["component"].as_str().unwrap().to_string(),
                r["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_push_the_registry_answers_500_twice_is_tried_again_and_lands() {
    let bed = TestBed::get();
    let proxy = RegistryProxy::start(
        &bed.registry,
        vec![frontend_manifest_fault(
            500,
            r#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#,
            2,
        )],
    );
    let repo = repo_named("retried");
    let run = push(&repo, &proxy.address);
    let pinned = digests(&run);
    assert_eq!(
        proxy.count("PUT", "-frontend/manifests/"),
        3,
        "{:#?}",
        proxy.requests()
    );
    assert_eq!(
        proxy.count("PUT", "-backend/manifests/"),
        1,
        "{:#?}",
        proxy.requests()
    );
    // Each retry on one line: the registry's answer, the pause, the attempt.
    for attempt in [
        "retrying in 1 s (attempt 2 of 4)",
        "retrying in 2 s (attempt 3 of 4)",
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(attempt))
            .unwrap_or_else(|| panic!("no line with {attempt:?} in:\n{}", run.stderr));
        assert_contains(line, "500 Internal Server Error");
        assert_contains(line, "-frontend failed:");
    }
    assert!(!run.stderr.contains("attempt 4 of 4"), "{}", run.stderr);
    // What was pinned is what the registry serves, read past the proxy.
    let tag = tags(&run)
        .into_iter()
        .find(|(c, _)| c == "frontend")
        .unwrap()
        .1;
    let frontend = pinned.iter().find(|(c, _)| c == "frontend").unwrap();
    assert_eq!(served_digest(&repo, "frontend", &tag), frontend.1);
}

#[test]
fn a_refusal_is_not_tried_again_and_says_what_the_registry_said() {
    let bed = TestBed::get();
    let proxy = RegistryProxy::start(
        &bed.registry,
        vec![frontend_manifest_fault(
            403,
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            usize::MAX,
        )],
    );
    let repo = repo_named("refused");
    let run = push(&repo, &proxy.address);
    assert_eq!(run.code, 1, "{}", run.all());
    // The daemon relays the registry's code alone ("denied").
    assert_contains(
        &run.stderr,
        "-frontend failed: Docker stream error: denied: the registry refused it; \
         check that the account from `docker login 127.0.0.1:",
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(
        proxy.count("PUT", "-frontend/manifests/"),
        1,
        "{:#?}",
        proxy.requests()
    );
}

/// The interleaving the suite met: two pushes of one commit at once, and
/// the registry verifying one's manifest while the other rewrites the
/// links of the same blobs, answering "digest invalid" + "manifest blob
/// unknown" (`RACING_PUSH_ANSWER`; the window is microseconds wide, so the
/// proxy gives that answer on purpose, to the first manifest that arrives).
/// Both pushes exit 0 and pin one digest: on this machine the second waits
/// for the first (a lock per image tag) and finds the tag pushed.
#[test]
fn two_pushes_of_one_commit_at_once_both_succeed_with_one_digest() {
    let bed = TestBed::get();
    let proxy = RegistryProxy::start(
        &bed.registry,
        vec![frontend_manifest_fault(400, RACING_PUSH_ANSWER, 1)],
    );
    let first = repo_named("raced");
    // A second checkout of the same commit, pushing to the same repositories.
    let second = ColonyRepo::create();
    std::fs::copy(first.config(), second.config()).unwrap();
    assert_eq!(
        first.git(&["rev-parse", "HEAD"]),
        second.git(&["rev-parse", "HEAD"])
    );
    let registry = proxy.address.clone();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| push(&first, &registry));
        let b = scope.spawn(|| push(&second, &registry));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a_digests, b_digests) = (digests(&a), digests(&b));
    assert_eq!(a_digests, b_digests, "two digests for one commit");
    let both = format!("{}{}", a.stderr, b.stderr);
    assert_contains(
        &both,
        "manifest blob unknown: blob unknown to registry; retrying in 1 s (attempt 2 of 4)",
    );
    assert_contains(&both, "already in the registry; build and push skipped");
    let tag = tags(&a)
        .into_iter()
        .find(|(c, _)| c == "frontend")
        .unwrap()
        .1;
    let frontend = a_digests.iter().find(|(c, _)| c == "frontend").unwrap();
    assert_eq!(served_digest(&first, "frontend", &tag), frontend.1);
}

/// The digest the bed's registry serves for a component's tag.
fn served_digest(repo: &ColonyRepo, component: &str, tag: &str) -> String {
    let registry = &TestBed::get().registry;
    manifest(registry, &repository(repo, component), tag)
        .expect("the tag is in the registry")
        .0
}
