//! Runs the distribution's image tools (mkfs.*, mtools, qemu-img) with errors that say which
//! tool failed, how it was called and what it printed.

use std::ffi::OsStr;
use std::process::{Command, Output};
use thiserror::Error;

/// An external tool that could not run or that failed.
#[derive(Debug, Error)]
pub enum ToolError {
    /// The program is not installed (or not on PATH).
    #[error("`{program}` is not installed (Debian package: {package}); scripts/deps installs it")]
    NotFound {
        program: String,
        package: &'static str,
    },
    /// The program could not be started for another reason.
    #[error("could not start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Which Debian package ships a program, for the "not installed" hint.
fn package_of(program: &str) -> &'static str {
    match program {
        "mkfs.ext4" | "e2fsck" | "debugfs" => "e2fsprogs",
        "mkfs.erofs" => "erofs-utils",
        "mksquashfs" => "squashfs-tools",
        "mkfs.vfat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "qemu-img" => "qemu-utils",
        "cp" => "coreutils",
        _ => "unknown",
    }
}

/// Renders a command line for error messages.
fn render(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `command` to completion, capturing its output; a non-zero exit becomes an error that
/// carries the tool's stderr (the part people need to see).
pub fn run(command: &mut Command) -> Result<Output, ToolError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ToolError::NotFound {
                package: package_of(&program),
                program: program.clone(),
            }
        } else {
            ToolError::Spawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        Err(ToolError::Failed {
            command: render(command),
            status: output.status,
            stderr,
        })
    }
}

/// A `Command` for `program` with a fixed C locale, so tool messages are stable.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env("LC_ALL", "C");
    command
}
