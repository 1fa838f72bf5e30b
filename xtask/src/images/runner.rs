//! The run-migrations binary that goes into the backend image: which one
//! (decided before any build, so an image it cannot run in is refused with
//! nothing built), and building it, once per change of its sources.
//!
//! It must run in any Linux image, `FROM scratch` included, so it is
//! linked statically: for the musl target of the image's architecture when
//! that target's standard library is installed (`rustup target add
//! x86_64-unknown-linux-musl`), else, for an image of this machine's own
//! architecture, for the host's glibc target with `+crt-static` (glibc 2.34
//! and later resolve host names from /etc/hosts and DNS without loading NSS
//! modules, which is all the runner needs). A prebuilt binary
//! (`COLONY_RUN_MIGRATIONS_BIN`) is checked for the image's architecture.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use crate::config::platform::{docker_architecture, Platform};

/// Where the binary comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `COLONY_RUN_MIGRATIONS_BIN`, checked.
    Prebuilt(PathBuf),
    /// `cargo build --release --target TRIPLE`, static; a musl target
    /// names the C compiler for the crates that build C (ring).
    Build {
        triple: String,
        static_glibc: bool,
        c_compiler: Option<String>,
    },
}

/// The decision: the binary for the backend image's platform.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerPlan {
    pub platform: Platform,
    pub source: Source,
}

impl RunnerPlan {
    /// One line for the plan.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Prebuilt(path) => format!(
                "run-migrations from {} (COLONY_RUN_MIGRATIONS_BIN), for {}",
                path.display(),
                self.platform
            ),
Source::Build {
                triple,
                static_glibc: false,
                ..
            } => format!(
                "run-migrations built static for {} ({triple}), once per change of its sources",
                self.platform
            ),
Source::Build {
                triple,
                static_glibc: true,
                ..
            } => format!(
                "run-migrations built static for {} ({triple} with glibc linked in, because the musl target \
                 or its C compiler is missing: `rustup target add {}` and musl-gcc (Debian: musl-tools) make \
                 a smaller one), once per change of its sources",
                self.platform,
                musl_triple(&self.platform.architecture).unwrap_or("?")
            ),
        }
    }
}

fn musl_triple(architecture: &str) -> Option<&'static str> {
    match architecture {
        "amd64" => Some("x86_64-unknown-linux-musl"),
        "arm64" => Some("aarch64-unknown-linux-musl"),
        _ => None,
    }
}

fn gnu_triple(architecture: &str) -> Option<&'static str> {
    match architecture {
        "amd64" => Some("x86_64-unknown-linux-gnu"),
        "arm64" => Some("aarch64-unknown-linux-gnu"),
        _ => None,
    }
}

/// What is known about a prebuilt binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Prebuilt {
    pub path: PathBuf,
    /// Its ELF architecture, or why it is not a Linux binary we know.
    pub architecture: Result<String, String>,
}

/// Decides the binary for an image of `platform`. Pure: `host` is the
/// deploying machine (Linux with glibc, or not), `musl` the musl targets
/// that can be built here (standard library installed, C compiler found),
/// with their C compiler.
pub fn choose(
    platform: &Platform,
    host: &Platform,
    host_is_linux_gnu: bool,
    musl: &[(String, String)],
    prebuilt: Option<&Prebuilt>,
) -> Result<RunnerPlan, String> {
    if platform.os != "linux" {
        return Err(format!(
            "the backend image is {platform}; run-migrations runs only in Linux images"
        ));
    }
    let plan = |source| RunnerPlan {
        platform: platform.clone(),
        source,
    };
    if let Some(prebuilt) = prebuilt {
        return match &prebuilt.architecture {
            Ok(architecture) if *architecture == platform.architecture => {
                Ok(plan(Source::Prebuilt(prebuilt.path.clone())))
            }
            Ok(architecture) => Err(format!(
                "COLONY_RUN_MIGRATIONS_BIN {} is a linux/{architecture} binary, but the backend image is {platform}",
                prebuilt.path.display()
            )),
            Err(why) => Err(format!(
                "COLONY_RUN_MIGRATIONS_BIN {}: {why}",
                prebuilt.path.display()
            )),
        };
    }
    let Some(musl_target) = musl_triple(&platform.architecture) else {
        return Err(format!(
            "the backend image is {platform}; run-migrations is built for linux/amd64 and linux/arm64 only \
             (set COLONY_RUN_MIGRATIONS_BIN to a binary built for {platform})"
        ));
    };
    if let Some((triple, compiler)) = musl.iter().find(|(t, _)| t == musl_target) {
        return Ok(plan(Source::Build {
            triple: triple.clone(),
            static_glibc: false,
            c_compiler: Some(compiler.clone()),
        }));
    }
    if host_is_linux_gnu && host == platform {
        let triple = gnu_triple(&platform.architecture).unwrap_or(musl_target);
        return Ok(plan(Source::Build {
            triple: triple.to_string(),
            static_glibc: true,
            c_compiler: None,
        }));
    }
    Err(format!(
        "the backend image is {platform}, and this {host} machine cannot build run-migrations for it: install \
         the target and a C compiler for it (`rustup target add {musl_target}`; the README's Platforms section \
         says how), or set COLONY_RUN_MIGRATIONS_BIN to a {platform} binary, or build on a {platform} machine"
    ))
}

/// Pure: the architecture (Docker's word) of a Linux ELF executable, and
/// whether it asks for a dynamic loader (PT_INTERP).
pub fn elf_facts(bytes: &[u8]) -> Result<(String, bool), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF executable (run-migrations must be a Linux binary)".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let architecture = match u16_at(18) {
        0x3e => "amd64",
        0xb7 => "arm64",
        other => return Err(format!("an ELF executable for machine type {other:#x}")),
    };
    let offset = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(54) as usize, u16_at(56) as usize);
    let dynamic = (0..count)
        .map(|i| offset + i * size)
        .take_while(|at| at + 4 <= bytes.len())
        .any(|at| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) == 3);
    Ok((architecture.to_string(), dynamic))
}

// ------------------------------------------------------------------ I/O

/// Decides for the environment's backend image: its configured platform,
/// else the daemon's, else this machine's.
pub fn decide(
    configured: Option<&Platform>,
    daemon: Option<&Platform>,
    prebuilt: Option<&Path>,
) -> Result<RunnerPlan, String> {
    let host = Platform::host();
    let platform = configured.or(daemon).unwrap_or(&host);
    let prebuilt = prebuilt.map(|path| Prebuilt {
        path: path.to_path_buf(),
        architecture: read_head(path).and_then(|bytes| elf_facts(&bytes).map(|(a, _)| a)),
    });
    // A prebuilt binary needs no toolchain: rustc is not asked.
    let musl = match prebuilt {
        Some(_) => Vec::new(),
        None => buildable_musl_targets(&host),
    };
    choose(
        platform,
        &host,
        cfg!(all(target_os = "linux", target_env = "gnu")),
        &musl,
        prebuilt.as_ref(),
    )
}

fn read_head(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(head)
}

/// The musl targets this machine can build: the standard library is
/// installed and a C compiler for it is on PATH (`<arch>-linux-musl-gcc`,
/// or Debian's `musl-gcc` for this machine's own architecture).
fn buildable_musl_targets(host: &Platform) -> Vec<(String, String)> {
    installed_targets()
        .into_iter()
        .filter(|t| t.ends_with("-unknown-linux-musl"))
        .filter_map(|triple| {
            let arch = triple.split('-').next().unwrap_or_default().to_string();
            let mut candidates = vec![format!("{arch}-linux-musl-gcc")];
            if docker_architecture(&arch) == host.architecture {
                candidates.push("musl-gcc".into());
            }
            candidates
                .into_iter()
                .find(|c| on_path(c))
                .map(|compiler| (triple, compiler))
        })
        .collect()
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `rustc ARGS` (or `$RUSTC`), a short read-only probe (xshell, as git's).
fn rustc(args: &[&str]) -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sh = xshell::Shell::new()?;
    Ok(xshell::cmd!(sh, "{rustc} {args...}").quiet().read()?)
}

/// Targets whose standard library the active toolchain has.
fn installed_targets() -> Vec<String> {
    let Ok(sysroot) = rustc(&["--print", "sysroot"]) else {
        return Vec::new();
    };
    let sysroot = PathBuf::from(sysroot.trim());
    std::fs::read_dir(sysroot.join("lib/rustlib"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("lib").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The binary for `plan`: the prebuilt one, or a cached build keyed by a
/// hash of its sources, the lock file, the compiler and the target (so it
/// is compiled once per change, not once per deploy). `log` hears progress.
pub fn obtain(plan: &RunnerPlan, log: &dyn Fn(&str)) -> Result<PathBuf> {
    let (triple, static_glibc, c_compiler) = match &plan.source {
        Source::Prebuilt(path) => return Ok(path.clone()),
        Source::Build {
            triple,
            static_glibc,
            c_compiler,
        } => (triple.as_str(), *static_glibc, c_compiler.as_deref()),
    };
    let workspace = crate::config::workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let key = source_key(&workspace, triple, static_glibc)?;
    let cached = target_dir
        .join("run-migrations-cache")
        .join(format!("{triple}-{}", &key[..16]))
        .join("run-migrations");
    if cached.is_file() {
        log(&format!("run-migrations for {} is cached", plan.platform));
        return Ok(cached);
    }
    log(&format!(
        "compiling run-migrations for {} ({triple}; once per change of its sources)",
        plan.platform
    ));
    cargo_build(&workspace, triple, static_glibc, c_compiler, log)?;
    let built = target_dir.join(triple).join("release/run-migrations");
    let (_, dynamic) =
        elf_facts(&read_head(&built).map_err(anyhow::Error::msg)?).map_err(anyhow::Error::msg)?;
    if dynamic {
        bail!(
            "{} came out dynamically linked; it would not run in every image",
            built.display()
        );
    }
    std::fs::create_dir_all(cached.parent().expect("a parent"))?;
    let partial = cached.with_extension("partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("copying {} into the cache", built.display()))?;
    std::fs::rename(&partial, &cached)?;
    Ok(cached)
}

fn cargo_build(
    workspace: &Path,
    triple: &str,
    static_glibc: bool,
    c_compiler: Option<&str>,
    log: &dyn Fn(&str),
) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = workspace.join("Cargo.toml").display().to_string();
    let argv: Vec<String> = [
        cargo.as_str(),
        "build",
        "--release",
        "--manifest-path",
        &manifest,
        "--target",
        triple,
        "--package",
        "backend-migrations",
        "--bin",
        "run-migrations",
    ]
    .map(String::from)
    .to_vec();
    let mut vars = vec![
        // Symbols out: a smaller layer to push, and nothing lost for a
        // program whose errors are its messages.
        (
            "CARGO_PROFILE_RELEASE_STRIP".to_string(),
            "symbols".to_string(),
        ),
    ];
    if static_glibc {
        // Only the target's artifacts get +crt-static (build scripts and
        // proc macros stay ordinary host programs).
        vars.push((
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                triple.to_uppercase().replace('-', "_")
            ),
            "-C target-feature=+crt-static".to_string(),
        ));
    }
    if let Some(compiler) = c_compiler {
        vars.push((
            format!("CC_{}", triple.replace('-', "_")),
            compiler.to_string(),
        ));
    }
    let (code, lines) = crate::process::spawn_with(&argv, &vars)?.lines_collect(|line| {
        if line.trim_start().starts_with("Compiling") || line.contains("error") {
            log(line.trim());
        }
    })?;
    if code != 0 {
        bail!(
            "cargo build of run-migrations for {triple} failed (exit {code}):\n{}",
            lines.join("\n")
        );
    }
    Ok(())
}

/// sha256 of what the binary is made of.
fn source_key(workspace: &Path, triple: &str, static_glibc: bool) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{triple} static_glibc={static_glibc} strip=symbols\n"
    ));
    hasher.update(rustc(&["-vV"]).context("running rustc -vV")?);
    let crate_dir = workspace.join("backend-migrations");
    let mut files = vec![
        workspace.join("Cargo.lock"),
        workspace.join("Cargo.toml"),
        crate_dir.join("Cargo.toml"),
    ];
    files.extend(crate::config::inputs::files_under(&crate_dir.join("src"))?);
    files.sort();
    for file in files {
        hasher.update(
            file.strip_prefix(workspace)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(architecture: &str) -> Platform {
        Platform::new("linux", architecture)
    }

    #[test]
    fn platforms_are_spelled_as_docker_spells_them() {
        assert_eq!(Platform::parse("linux/arm64").unwrap(), linux("arm64"));
        assert_eq!(Platform::parse("linux/x86_64").unwrap(), linux("amd64"));
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert!(Platform::parse("arm64")
            .unwrap_err()
            .contains("os/architecture"));
    }

    #[test]
    fn musl_when_installed_else_static_glibc_for_this_machine_else_a_refusal() {
        let musl = vec![(
            "x86_64-unknown-linux-musl".to_string(),
            "musl-gcc".to_string(),
        )];
        let amd64 = linux("amd64");
        assert_eq!(
            choose(&amd64, &amd64, true, &musl, None).unwrap().source,
            Source::Build {
                triple: "x86_64-unknown-linux-musl".into(),
                static_glibc: false,
                c_compiler: Some("musl-gcc".into()),
            }
        );
        let fallback = choose(&amd64, &amd64, true, &[], None).unwrap();
        assert_eq!(
            fallback.source,
            Source::Build {
                triple: "x86_64-unknown-linux-gnu".into(),
                static_glibc: true,
                c_compiler: None,
            }
        );
        assert!(fallback
            .describe()
            .contains("rustup target add x86_64-unknown-linux-musl"));
        // An arm64 image from this amd64 machine, no arm64 target: refused.
        let refusal = choose(&linux("arm64"), &amd64, true, &musl, None).unwrap_err();
        assert!(
            refusal.contains("rustup target add aarch64-unknown-linux-musl")
                && refusal.contains("COLONY_RUN_MIGRATIONS_BIN"),
            "{refusal}"
        );
        // A Mac (no glibc) needs the musl target even for its own architecture.
        let mac = Platform::new("macos", "arm64");
        assert!(choose(&linux("arm64"), &mac, false, &[], None).is_err());
        assert!(choose(
            &Platform::new("windows", "amd64"),
            &amd64,
            true,
            &musl,
            None
        )
        .is_err());
    }

    #[test]
    fn a_prebuilt_binary_must_match_the_image() {
        let prebuilt = |architecture: Result<&str, &str>| Prebuilt {
            path: "/tmp/run-migrations".into(),
            architecture: architecture.map(str::to_string).map_err(str::to_string),
        };
        let amd64 = linux("amd64");
        assert_eq!(
            choose(&amd64, &amd64, true, &[], Some(&prebuilt(Ok("amd64"))))
                .unwrap()
                .source,
            Source::Prebuilt("/tmp/run-migrations".into())
        );
        let wrong = choose(
            &linux("arm64"),
            &amd64,
            true,
            &[],
            Some(&prebuilt(Ok("amd64"))),
        );
        assert!(wrong
            .unwrap_err()
            .contains("is a linux/amd64 binary, but the backend image is linux/arm64"));
        assert!(choose(
            &amd64,
            &amd64,
            true,
            &[],
            Some(&prebuilt(Err("not an ELF executable")))
        )
        .is_err());
    }

    #[test]
    fn elf_headers_say_architecture_and_linking() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (architecture, dynamic) = elf_facts(&this).unwrap();
        assert_eq!(architecture, Platform::host().architecture);
        assert!(dynamic, "test binaries are dynamically linked");
        assert!(elf_facts(b"#!/bin/sh\necho hi\n").is_err());
        let mut arm = this[..64].to_vec();
        arm[18] = 0xb7;
        arm[56] = 0; // no program headers
        assert_eq!(elf_facts(&arm).unwrap(), ("arm64".to_string(), false));
    }
}
