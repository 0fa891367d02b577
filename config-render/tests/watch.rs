//! The confd loop against a real datastore (SQLite): a change to a key a template depends on
//! re-renders it; a change elsewhere does not; a refused render keeps the old file.

use std::time::{Duration, Instant};

use brindle_datastore::testing::SqliteFile;
use brindle_render::TemplateResource;
use brindle_render::watch::{Template, run};

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_under_the_keys_rerender_and_others_do_not() {
    let db = SqliteFile::new().unwrap();
    let store = brindle_datastore::connect(&db.selection()).await.unwrap();
    store.create("/brindle/v1/nodes/a", br#"{"ip":"10.0.0.1"}"#).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reloads = dir.path().join("reloads");
    let template = Template {
        resource: TemplateResource {
            src: "peers.j2".into(),
            dest: dir.path().join("peers.conf"),
            keys: vec!["/brindle/v1/nodes/".into()],
            mode: 0o644,
            check_cmd: Some("! grep -q forbidden {src}".into()),
            reload_cmd: Some(format!("echo x >> {}", reloads.display())),
        },
        text: "# {{ node }}\n{% for key, value in kv | items %}peer {{ value.ip }}\n{% endfor %}".into(),
    };
    let templates = vec![template];
    let runner = {
        let store = store.clone();
        let templates = templates.clone();
        tokio::spawn(async move { run(store, &templates, "self", Duration::from_millis(100), false).await })
    };
    let dest = dir.path().join("peers.conf");
    let read = || std::fs::read_to_string(&dest).unwrap_or_default();
    wait_for("first render", || read() == "# self\npeer 10.0.0.1\n");
    store.create("/brindle/v1/nodes/b", br#"{"ip":"10.0.0.2"}"#).await.unwrap();
    wait_for("a new node appears", || read().contains("peer 10.0.0.2"));
    let reloads_now = std::fs::read_to_string(&reloads).unwrap().lines().count();
    assert_eq!(reloads_now, 2);
    // A key outside the template's prefixes changes nothing.
    store.create("/brindle/v1/ippools/p", b"{}").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(std::fs::read_to_string(&reloads).unwrap().lines().count(), reloads_now);
    // A value the check refuses leaves the installed file alone.
    store.create("/brindle/v1/nodes/c", br#"{"ip":"forbidden"}"#).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!read().contains("forbidden"), "{}", read());
    assert!(read().contains("peer 10.0.0.2"));
    runner.abort();
}
