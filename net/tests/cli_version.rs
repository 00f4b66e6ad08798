//! `tally-server --version` prints the crate version and exits 0 (operators and
//! packagers ask every binary for it).

use std::process::Command;

#[test]
fn tally_server_version_names_the_crate_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_tally-server"))
        .arg("--version")
        .output()
        .expect("run tally-server --version");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim(),
        format!("tally-server {}", env!("CARGO_PKG_VERSION"))
    );
}
