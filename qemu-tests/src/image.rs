//! The workspace, its setup script, and building the firmware image.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::shapes::Arch;

/// The workspace root: this package's parent directory.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("qemu-tests sits inside the workspace").to_owned()
}

/// The cargo that runs us (set by `cargo run`), so nested builds use the same toolchain.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub(crate) const FIRMWARE_PACKAGE: &str = "pcie-iommu-boot";
pub(crate) const FIRMWARE_BIN: &str = "pcie-iommu-firmware";

/// Where the build leaves the ELF.
pub(crate) fn firmware_path(root: &Path, arch: Arch) -> PathBuf {
    root.join("target").join(arch.triple()).join("release").join(FIRMWARE_BIN)
}

/// The firmware build command, run from the workspace root.
///
/// The target dir is pinned to the workspace's `target/` (whatever CARGO_TARGET_DIR the caller
/// has), and RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS are removed because they would *replace* the
/// config's target rustflags (`relocation-model=static`, `-Tdefmt.x`; bringup.md pitfall 6).
pub(crate) fn build_command(root: &Path, arch: Arch) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .args(["build", "--release", "-p", FIRMWARE_PACKAGE, "--target", arch.triple()])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null());
    cmd
}

/// Builds the image for `arch`; cargo's own output goes to our stderr.
pub(crate) fn build_firmware(root: &Path, arch: Arch) -> Result<PathBuf, String> {
    if std::env::var_os("RUSTFLAGS").is_some() {
        eprintln!(
            "xtask: note: RUSTFLAGS is set; it is not passed to the firmware build (use CARGO_TARGET_<TRIPLE>_RUSTFLAGS)"
        );
    }
    eprintln!("xtask: building {FIRMWARE_PACKAGE} for {}", arch.triple());
    let status =
        build_command(root, arch).status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("firmware build for {} failed ({status})", arch.triple()));
    }
    let elf = firmware_path(root, arch);
    if !elf.is_file() {
        return Err(format!("the build succeeded but {} is missing", elf.display()));
    }
    Ok(elf)
}

/// Runs `qemu-tests/setup.sh`, which installs the Rust targets and QEMU 10 when missing. Its
/// exit status 2 means "cannot install here; instructions printed".
pub(crate) fn run_setup(root: &Path) -> Result<(), String> {
    let script = root.join("qemu-tests").join("setup.sh");
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(2) => {
            Err("setup.sh could not install what is missing; follow its instructions above".into())
        }
        _ => Err(format!("{} failed ({status})", script.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_paths() {
        let root = workspace_root();
        assert!(root.join("qemu-tests").join("setup.sh").is_file());
        assert_eq!(
            firmware_path(Path::new("/w"), Arch::X86_64),
            Path::new("/w/target/x86_64-unknown-none/release/pcie-iommu-firmware")
        );
    }

    #[test]
    fn build_command_pins_target_dir_and_drops_rustflags() {
        let cmd = build_command(Path::new("/w"), Arch::Aarch64);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            ["build", "--release", "-p", "pcie-iommu-boot", "--target", "aarch64-unknown-none"]
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/w")));
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("CARGO_TARGET_DIR".as_ref(), Some("/w/target".as_ref()))));
        assert!(envs.contains(&("RUSTFLAGS".as_ref(), None)));
        assert!(envs.contains(&("CARGO_ENCODED_RUSTFLAGS".as_ref(), None)));
    }
}
