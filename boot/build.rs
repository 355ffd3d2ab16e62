//! Picks the linker script for the target and adds defmt's. Link arguments live here, not in
//! RUSTFLAGS, so a user's RUSTFLAGS cannot silently drop them (bringup.md pitfall 6).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let script = match target.as_str() {
        "x86_64-unknown-none" => "x86_64.ld",
        "aarch64-unknown-none" | "aarch64-unknown-none-softfloat" => "aarch64.ld",
        // Host builds (for example `cargo check --workspace`) get no image and no script.
        _ => return,
    };
    let path = format!("{manifest}/../linker/{script}");
    println!("cargo:rerun-if-changed={path}");
    println!("cargo:rerun-if-changed=src/arch/x86_64/boot.s");
    println!("cargo:rerun-if-changed=src/arch/aarch64/boot.s");
    println!("cargo:rustc-link-arg-bins=-T{path}");
    // Without defmt.x the image links but the decoder prints nothing (pitfall 6).
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    println!("cargo:rustc-link-arg-bins=--nmagic");
}
