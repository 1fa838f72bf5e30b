//! `images.push = "fast"`, and the default "auto" handing over to it: this
//! tool pushes from the daemon's export, each layer gzipped at the fastest
//! level with incompressible bytes stored.

use std::io::Read;

use crate::common::assert_contains;
use crate::images::{
    assert_docker_v2_gzip, blob, docker, images, layers_and_config, manifest, repo_named, report,
    reports, repository,
};
use testkit::TestBed;

const NOISE_BYTES: usize = 6 * 1024 * 1024;

/// Bytes no compressor can shrink, new on every run.
fn noise() -> Vec<u8> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    (0..NOISE_BYTES / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

#[test]
fn a_fast_push_is_plain_gzip_that_docker_pulls_and_no_layer_goes_up_twice() {
    let bed = TestBed::get();
    let repo = repo_named("fastpush");
    let config = repo.config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[environments.colony-dev.images]\npush = \"fast\"\n"),
    )
    .unwrap();
    let noise = noise();
    std::fs::write(repo.root().join("frontend/noise.bin"), &noise).unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a frontend with incompressible data"]);

    let run = images(&repo, "push", &bed.registry, &[]);
    let first = reports(&run);
    for component in ["backend", "frontend"] {
        assert_eq!(
            report(&first, component)["push"]["status"],
            "done",
            "{}",
            run.all()
        );
    }
    assert_contains(&run.stderr, "layers sent");

    // What the registry holds: a Docker v2 manifest of gzip layers, under
    // the digest the report pins.
    let frontend = repository(&repo, "frontend");
    let tag = report(&first, "frontend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let (digest, served) = manifest(&bed.registry, &frontend, &tag).expect("pushed");
    assert_eq!(report(&first, "frontend")["digest"], digest.as_str());
    let layers = assert_docker_v2_gzip(&served);
    for layer in layers {
        let bytes = blob(&bed.registry, &frontend, layer["digest"].as_str().unwrap());
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip's magic");
    }
    // The noise went out stored: about its own size, not shrunk, barely grown.
    let size = layers
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        size >= NOISE_BYTES as u64 && size < NOISE_BYTES as u64 + NOISE_BYTES as u64 / 50,
        "the noise's layer is {size} bytes"
    );
    // Its contents are the file's, read back through gzip.
    let (tars, _) = layers_and_config(&bed.registry, &frontend, &tag);
    let mut found = None;
    for tar in tars {
        let mut archive = tar::Archive::new(tar.as_slice());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().ends_with("noise.bin") {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                found = Some(bytes);
            }
        }
    }
    assert!(found == Some(noise), "noise.bin read back differs");

    // The bed's Docker pulls both by digest, and the backend's runner runs.
    for component in ["backend", "frontend"] {
        let pinned = report(&first, component)["pinned"]
            .as_str()
            .unwrap()
            .to_string();
        let pulled = docker(&["pull", &pinned]);
        assert!(
            pulled.status.success(),
            "{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
    }
    let backend = report(&first, "backend")["pinned"]
        .as_str()
        .unwrap()
        .to_string();
    let ran = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/run-migrations",
        &backend,
        "--help",
    ]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_contains(&String::from_utf8_lossy(&ran.stdout), "Usage");

    // A new commit with nothing changed in the images: a new tag, the same
    // image, and no layer sent again.
    repo.git(&[
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "nothing for the images",
    ]);
    let run = images(&repo, "push", &bed.registry, &[]);
    let second = reports(&run);
    for component in ["backend", "frontend"] {
        assert_eq!(
            report(&second, component)["push"]["status"],
            "done",
            "{}",
            run.all()
        );
        assert_eq!(
            report(&second, component)["digest"],
            report(&first, component)["digest"],
            "the same image pushed the same way has the same digest"
        );
    }
    assert_eq!(
        run.stderr.matches("0 layers sent").count(),
        2,
        "{}",
        run.stderr
    );

    // What this machine learned is a guess, checked: with the sizes of two
    // of the backend's known layers swapped in it, each is taken for the
    // other, found out once read, and the push starts over reading every
    // layer, to the same image.
    let known_file = repo
        .root()
        .join(".home/.cache/colony-deploy/fast-push-layers-v1.tsv");
    let text = std::fs::read_to_string(&known_file).expect("the pushes learned their layers");
    let backend = repository(&repo, "backend");
    let backend_tag = report(&first, "backend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, backend_manifest) = manifest(&bed.registry, &backend, &backend_tag).unwrap();
    let backend_layers: Vec<String> = backend_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect();
    let ours: Vec<usize> = (0..lines.len())
        .filter(|&i| backend_layers.contains(&lines[i][2]))
        .collect();
    assert!(ours.len() >= 2, "{text}");
    let (first_size, second_size) = (lines[ours[0]][1].clone(), lines[ours[1]][1].clone());
    assert_ne!(first_size, second_size, "{text}");
    lines[ours[0]][1] = second_size;
    lines[ours[1]][1] = first_size;
    let swapped: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
    std::fs::write(&known_file, swapped).unwrap();
    repo.git(&["commit", "-q", "--allow-empty", "-m", "again"]);
    let run = images(&repo, "push", &bed.registry, &[]);
    let third = reports(&run);
    assert_contains(
        &run.stderr,
        "was not the one its size suggested; pushing again",
    );
    assert_eq!(
        report(&third, "backend")["digest"],
        report(&first, "backend")["digest"]
    );
}

/// The default (`images.push = "auto"`): the daemon pushes an image that
/// changed a little on a base the registry has, and hands an image whose
/// new layers are most of it over to this tool's push.
#[test]
fn by_default_the_daemon_pushes_a_small_change_and_hands_a_big_new_image_over() {
    const BIG: usize = 40 * 1024 * 1024;
    let bed = TestBed::get();
    let repo = repo_named("autopush");
    let mut data = Vec::new();
    while data.len() < BIG {
        data.extend(noise());
    }
    std::fs::write(repo.root().join("frontend/noise.bin"), &data).unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a frontend of 40 MiB of new data"]);

    let run = images(&repo, "push", &bed.registry, &[]);
    let pushed = reports(&run);
    let said = |component: &str, what: &str| {
        run.stderr
            .lines()
            .any(|l| l.contains(component) && l.contains(what))
    };
    // The frontend (all of it new): taken over, and pushed by this tool.
    assert!(
        said("frontend", "this tool pushes it instead"),
        "{}",
        run.all()
    );
    assert!(said("frontend", "1 layer sent"), "{}", run.all());
    // The backend (a small app on the Python base the registry has): the
    // daemon's push, to the end.
    assert!(
        !said("backend", "this tool pushes it instead") && !said("backend", "layers sent"),
        "{}",
        run.all()
    );
    for component in ["backend", "frontend"] {
        assert_eq!(
            report(&pushed, component)["push"]["status"],
            "done",
            "{}",
            run.all()
        );
        // The tag names the reported digest (the daemon's given-up push
        // named nothing), and the bed's Docker pulls it.
        let tag = report(&pushed, component)["tag"].as_str().unwrap();
        let (digest, _) = manifest(&bed.registry, &repository(&repo, component), tag).unwrap();
        assert_eq!(report(&pushed, component)["digest"], digest.as_str());
        let pulled = docker(&[
            "pull",
            report(&pushed, component)["pinned"].as_str().unwrap(),
        ]);
        assert!(
            pulled.status.success(),
            "{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
    }
}
