//! Everything the build, the tests and the image use from outside this repository is installed
//! by `scripts/install-deps.sh`, which installs exactly `scripts/packages.txt`. This test finds
//! what is used without trusting the list: the programs the code executes (every literal
//! program name given to `Command::new` in the workspace, and the few named at run time), `protoc` and the
//! `.proto` files imported by crates that compile protobuf, and asks dpkg which package ships
//! each. A package that is not in the list fails the test by name, so a machine on which someone
//! once installed it by hand cannot hide the missing step. The image gets the same check: the
//! Dockerfile's build stage must install what the build needs, its final stage what the
//! product's own code executes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Programs named at run time, or in a shell command line, rather than as a literal the scan
/// finds, and where.
const NAMED_AT_RUN_TIME: &[(&str, &str)] = &[
    ("birdc", "agent/src/main.rs: BIRD's reload command, run through sh"),
    ("iptables-legacy-save", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("iptables-legacy-restore", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("ip6tables-legacy-save", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("ip6tables-legacy-restore", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("iptables-nft-save", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("iptables-nft-restore", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("ip6tables-nft-save", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("ip6tables-nft-restore", "agent/src/dataplane/iptables.rs: Backend::tool"),
    ("/usr/lib/cni/ptp", "cni/tests and bench/src/cni.rs: the reference plugins"),
    ("/usr/lib/cni/host-local", "cni/tests and bench/src/cni.rs: the reference plugins"),
    ("/usr/lib/cni/portmap", "cni/tests/chaining.rs"),
    ("/usr/lib/cni/bandwidth", "cni/tests/chaining.rs"),
];

/// Crates that compile protobuf at build time do it through one of these, which run `protoc`.
const PROTOBUF_BUILDERS: &[&str] = &["prost-build", "tonic-build", "tonic-prost-build"];

/// Where the product's code lives (what the image runs and the libraries it links), as
/// opposed to tests and benches.
const PRODUCT_SOURCES: &[&str] = &["agent/src", "cni/src", "ctl/src", "config-render/src", "datastore/src", "bgp/src"];

/// Files under the product's sources that only tests compile.
const TEST_ONLY_FILES: &[&str] = &["tests.rs", "fixtures.rs", "testing.rs"];

/// One line of scripts/packages.txt.
#[derive(Debug)]
struct Entry {
    source: String,
    name: String,
}

fn install_list() -> Vec<Entry> {
    let text = std::fs::read_to_string(repo().join("scripts/packages.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let (source, name) = (words.next().unwrap(), words.next().expect("a name after the source"));
            assert!(["debian", "pypi", "cargo"].contains(&source), "packages.txt: unknown source in {l:?}");
            assert!(words.next().is_some(), "packages.txt: say what {name} is for: {l:?}");
            // A pinned PyPI package is listed as name==version; its program has the name.
            Entry { source: source.to_owned(), name: name.split("==").next().unwrap().to_owned() }
        })
        .collect()
}

fn listed(list: &[Entry], source: &str) -> BTreeSet<String> {
    list.iter().filter(|e| e.source == source).map(|e| e.name.clone()).collect()
}

/// Something used from outside the repository, and who uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Need {
    /// A program name (looked up in PATH) or an absolute path.
    what: String,
    /// Where it is used, for the failure message.
    used_by: String,
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The literal program names in one line of Rust: `Command::new("p")`, a namespace
/// helper's `.command("p")`, and `"netns", "exec", <namespace>, "p"`.
fn programs_in(line: &str) -> Vec<&str> {
    let literal = |rest: &'static str| {
        line.match_indices(rest).filter_map(move |(i, _)| {
            let tail = &line[i + rest.len()..];
            tail.find('"').map(|end| &tail[..end])
        })
    };
    let mut found: Vec<&str> = literal("Command::new(\"").chain(literal(".command(\"")).collect();
    for (i, marker) in line.match_indices("\"netns\", \"exec\", ") {
        // Skip the namespace argument; a literal after it is the program.
        let after_namespace = line[i + marker.len()..].split_once(", ").map(|(_, rest)| rest);
        if let Some(program) = after_namespace.and_then(|rest| rest.strip_prefix('"')).and_then(|r| r.split('"').next())
        {
            found.push(program);
        }
    }
    found
}

/// Every program named literally under `dir` (see [`programs_in`]), test-only files left out
/// when `product_only`.
fn executed_programs(dir: &Path, product_only: bool) -> Vec<Need> {
    let mut files = Vec::new();
    rust_sources(dir, &mut files);
    let mut needs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy();
        if product_only && TEST_ONLY_FILES.contains(&name.as_ref()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(repo()).unwrap().display().to_string();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
            for program in programs_in(line) {
                needs.push(Need { what: program.to_owned(), used_by: format!("{relative}:{}", number + 1) });
            }
        }
    }
    needs
}

/// What the build needs: `protoc` and the `.proto` imports that a protobuf-compiling crate
/// does not carry itself, found from `cargo metadata`.
fn build_needs() -> Vec<Need> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut needs = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let compiles_protobuf = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "build" && PROTOBUF_BUILDERS.contains(&d["name"].as_str().unwrap_or_default()));
        if !compiles_protobuf {
            continue;
        }
        let name = package["name"].as_str().unwrap();
        needs.push(Need { what: "protoc".into(), used_by: format!("the build of {name} (protobuf)") });
        let root = Path::new(package["manifest_path"].as_str().unwrap()).parent().unwrap();
        let mut protos = Vec::new();
        files_with_extension(root, "proto", &mut protos);
        let carried: Vec<String> = protos.iter().map(|p| p.display().to_string()).collect();
        for proto in &protos {
            for import in proto_imports(&std::fs::read_to_string(proto).unwrap()) {
                if carried.iter().any(|c| c.ends_with(&format!("/{import}"))) {
                    continue;
                }
                let used_by = format!("{name}'s {}", proto.strip_prefix(root).unwrap().display());
                needs.push(Need { what: format!("/usr/include/{import}"), used_by });
            }
        }
    }
    needs.sort();
    needs.dedup_by(|a, b| a.what == b.what);
    needs
}

fn files_with_extension(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            files_with_extension(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// The files a `.proto` file imports.
fn proto_imports(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("import "))
        .filter_map(|rest| rest.split('"').nth(1))
        .map(str::to_owned)
        .collect()
}

/// Where a need is on this machine: a path as given, or the program found in PATH.
fn locate(what: &str) -> Option<PathBuf> {
    if what.starts_with('/') {
        return Path::new(what).exists().then(|| PathBuf::from(what));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&format!("{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
        .map(|dir| dir.join(what))
        .find(|p| p.is_file())
}

/// The Debian package that ships `path`, trying the names it may be registered under (a merged
/// /usr, an alternatives link).
fn debian_package(path: &Path) -> Option<String> {
    let text = path.display().to_string();
    let mut candidates = vec![text.clone()];
    for (merged, original) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")] {
        if let Some(rest) = text.strip_prefix(merged) {
            candidates.push(format!("{original}{rest}"));
        }
    }
    if let Ok(target) = path.canonicalize() {
        candidates.push(target.display().to_string());
    }
    candidates.into_iter().find_map(|candidate| {
        let out = Command::new("dpkg-query").args(["-S", &candidate]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| !l.starts_with("diversion "))?;
        let packages = line.rsplit_once(": ")?.0;
        Some(packages.split(", ").next()?.split(':').next()?.to_owned())
    })
}

/// Whether Debian marks a package Essential (present on every Debian system).
fn essential(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Essential}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
}

/// For each need: the package that ships it (Debian), or its name when the list installs it
/// from PyPI or crates.io. Problems are collected, not panicked on, so one run names them all.
fn providers(needs: &[Need], list: &[Entry], problems: &mut Vec<String>) -> BTreeMap<Need, String> {
    let mut found = BTreeMap::new();
    let mut asked = BTreeSet::new();
    // One question per program or file (dpkg is slow to ask), naming its first user.
    for need in needs.iter().filter(|n| asked.insert(n.what.clone())) {
        let Some(path) = locate(&need.what) else {
            problems.push(format!(
                "{} (used by {}) is not on this machine: run scripts/install-deps.sh, or add the package \
                 that ships it to scripts/packages.txt",
                need.what, need.used_by
            ));
            continue;
        };
        let program = path.file_name().unwrap().to_string_lossy().into_owned();
        let package = debian_package(&path).or_else(|| {
            list.iter()
                .find(|e| e.source != "debian" && (e.name == program || e.name == need.what))
                .map(|e| e.name.clone())
        });
        match package {
            Some(package) => {
                found.insert(need.clone(), package);
            }
            None => problems.push(format!(
                "{} (used by {}) comes from no Debian package and no pypi or cargo entry of scripts/packages.txt",
                path.display(),
                need.used_by
            )),
        }
    }
    found
}

#[test]
fn the_scan_reads_every_way_a_program_is_named() {
    assert_eq!(programs_in(r#"let out = Command::new("ipset").args(["list"]);"#), ["ipset"]);
    assert_eq!(programs_in(r#"run(self.netns.command("bridge").args(["fdb"]))"#), ["bridge"]);
    assert_eq!(programs_in(r#".args(["netns", "exec", &state.router, "etcd", "--name=lab"])"#), ["etcd"]);
    assert_eq!(programs_in(r#".args(["netns", "exec", &node.netns.name])"#), Vec::<&str>::new());
    assert_eq!(programs_in(r#"Command::new(binary)"#), Vec::<&str>::new());
}

#[test]
fn every_program_and_file_the_build_and_the_tests_use_comes_from_the_install_list() {
    let list = install_list();
    let mut problems = Vec::new();
    let debian = listed(&list, "debian");
    for package in &debian {
        let installed = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
        if !installed {
            problems
                .push(format!("{package} is in scripts/packages.txt but not installed: run scripts/install-deps.sh"));
        }
    }

    let mut needs = executed_programs(&repo(), false);
    needs.extend(
        NAMED_AT_RUN_TIME.iter().map(|(what, used_by)| Need { what: (*what).into(), used_by: (*used_by).into() }),
    );
    needs.extend(build_needs());
    assert!(needs.iter().any(|n| n.what == "protoc"), "etcd-client compiles protobuf: the scan must see it");
    for program in ["bird", "etcd", "gobgp", "ss"] {
        assert!(needs.iter().any(|n| n.what == program), "the tests run {program}: the scan must see it");
    }

    let non_debian: BTreeSet<String> = list.iter().filter(|e| e.source != "debian").map(|e| e.name.clone()).collect();
    for (need, package) in providers(&needs, &list, &mut problems) {
        if !debian.contains(&package) && !non_debian.contains(&package) && !essential(&package) {
            problems.push(format!(
                "{} (used by {}) comes from the Debian package {package}, which scripts/packages.txt does not list",
                need.what, need.used_by
            ));
        }
    }
    assert!(problems.is_empty(), "the install list is incomplete:\n  {}", problems.join("\n  "));
}

/// The Debian packages each stage of the Dockerfile installs, in stage order.
fn dockerfile_stages() -> Vec<BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut stages: Vec<BTreeSet<String>> = Vec::new();
    // Join continued lines, then read each instruction.
    for instruction in text.replace("\\\n", " ").lines() {
        if instruction.starts_with("FROM ") {
            stages.push(BTreeSet::new());
        }
        for command in instruction.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                let stage = stages.last_mut().expect("apt-get before FROM");
                stage.extend(words[at + 2..].iter().filter(|w| !w.starts_with('-')).map(|w| (*w).to_owned()));
            }
        }
    }
    stages
}

#[test]
fn the_image_installs_what_the_build_needs_and_what_the_product_executes() {
    let list = install_list();
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2, "a build stage and the image");
    let mut problems = Vec::new();

    let build = providers(&build_needs(), &list, &mut problems);
    let mut product = Vec::new();
    for dir in PRODUCT_SOURCES {
        product.extend(executed_programs(&repo().join(dir), true));
    }
    product.extend(
        NAMED_AT_RUN_TIME
            .iter()
            .filter(|(what, _)| !what.starts_with('/'))
            .map(|(what, used_by)| Need { what: (*what).into(), used_by: (*used_by).into() }),
    );
    let runtime = providers(&product, &list, &mut problems);
    for (stage, needs, role) in [(&stages[0], build, "build stage"), (&stages[1], runtime, "final stage")] {
        for (need, package) in needs {
            if !stage.contains(&package) && !essential(&package) {
                problems.push(format!(
                    "{} (used by {}) comes from {package}, which the Dockerfile's {role} does not install",
                    need.what, need.used_by
                ));
            }
        }
    }
    assert!(problems.is_empty(), "the image is incomplete:\n  {}", problems.join("\n  "));
}
