//! `brindle-bgp run` refuses a configuration it cannot use before it does anything: exit code
//! 2, as `--help` promises, with the file and the field named.

use std::process::Command;

#[test]
fn an_unusable_configuration_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("asn = 0\nrouter_id = \"10.0.0.1\"\n", "asn: 0 is reserved"),
        ("asn = 65001\nrouter_id = \"0.0.0.0\"\n", "router_id: 0.0.0.0"),
        (
            "asn = 65001\nrouter_id = \"10.0.0.1\"\n[[peers]]\naddress = \"10.0.0.2\"\nasn = 1\n[[peers]]\naddress = \"10.0.0.2\"\nasn = 2\n",
            "listed twice",
        ),
        ("asn = 65001\nrouter_id = \"10.0.0.1\"\nnonsense = 1\n", "not a valid configuration"),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_brindle-bgp")).args(["run", "--config"]).arg(&path).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {said}");
        assert!(said.contains(&path.display().to_string()) && said.contains(expected), "{said}");
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_brindle-bgp"))
        .args(["run", "--config", "/nonexistent/brindle-bgp.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}
