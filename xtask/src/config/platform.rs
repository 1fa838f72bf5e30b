//! An image platform (`linux/arm64`), as deploy.toml names one and the
//! Docker daemon reports it.

use std::fmt;

/// An image platform in Docker's words: `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    pub fn new(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: docker_architecture(architecture).to_string(),
        }
    }

    /// `linux/arm64`, `linux/amd64` (a variant such as `/v8` is ignored).
    pub fn parse(text: &str) -> Result<Platform, String> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next()) {
            (Some(os), Some(architecture)) if !os.is_empty() && !architecture.is_empty() => {
                Ok(Platform::new(os, architecture))
            }
            _ => Err(format!(
                "platform {text:?} is not os/architecture, e.g. \"linux/amd64\" or \"linux/arm64\""
            )),
        }
    }

    /// The platform this program was built for (the deploying machine).
    pub fn host() -> Platform {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// Docker's name for an architecture that `uname -m` or Rust spells
/// differently.
pub fn docker_architecture(architecture: &str) -> &str {
    match architecture {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
