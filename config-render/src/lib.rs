//! A confd-style renderer. A template resource names a template, the file it becomes, the
//! datastore prefixes it depends on, the file's mode, a command that checks the staged file
//! and one that reloads whoever reads it. Rendering writes atomically and only when the
//! content differs, installs only what passed the check, then reloads.

pub mod resource;
pub mod watch;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use resource::TemplateResource;

/// What went wrong with one template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource file is not what it should be.
    #[error("template resource {path}: {why}")]
    Resource {
        /// The resource file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The template does not render.
    #[error("template {template}: {source}")]
    Render {
        /// The template's name.
        template: String,
        /// minijinja's error, with line.
        source: minijinja::Error,
    },
    /// The check command refused the staged file; nothing was installed.
    #[error("check `{command}` refused the new {dest}: {output}")]
    CheckFailed {
        /// The command as run.
        command: String,
        /// The destination that was left alone.
        dest: PathBuf,
        /// What the command said.
        output: String,
    },
    /// The file was installed but the reload command failed.
    #[error("installed {dest}, but reload `{command}` failed: {output}")]
    ReloadFailed {
        /// The command as run.
        command: String,
        /// The installed file.
        dest: PathBuf,
        /// What the command said.
        output: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] brindle_datastore::Error),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What rendering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The destination already had this content.
    Unchanged,
    /// The new content passed the check, was installed and reloaded.
    Installed,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs a shell command with `{src}` replaced by `file`; its combined output on failure.
fn run(command: &str, file: &Path) -> Result<(), (String, String)> {
    let command = command.replace("{src}", &file.display().to_string());
    match Command::new("sh").arg("-c").arg(&command).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err((
            command,
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                .trim()
                .to_owned(),
        )),
        Err(e) => Err((command, e.to_string())),
    }
}

/// Renders `template` (its text) with `context` into `resource.dest`: staged next to the
/// destination, checked, renamed into place, then the reload command runs.
pub fn render(resource: &TemplateResource, template: &str, context: &serde_json::Value) -> Result<Outcome, Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let name = resource.src.display().to_string();
    env.add_template(&name, template).map_err(|source| Error::Render { template: name.clone(), source })?;
    let text = env
        .get_template(&name)
        .and_then(|t| t.render(context))
        .map_err(|source| Error::Render { template: name.clone(), source })?;
    if std::fs::read_to_string(&resource.dest).is_ok_and(|current| current == text) {
        return Ok(Outcome::Unchanged);
    }
    let dir = resource.dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut staged = tempfile::Builder::new()
        .prefix(".brindle-render-")
        .tempfile_in(dir)
        .map_err(io(format!("staging in {}", dir.display())))?;
    std::io::Write::write_all(&mut staged, text.as_bytes()).map_err(io("writing the staged file"))?;
    staged.as_file().sync_all().map_err(io("syncing the staged file"))?;
    staged.as_file().set_permissions(std::fs::Permissions::from_mode(resource.mode)).map_err(io("setting the mode"))?;
    if let Some(check) = &resource.check_cmd
        && let Err((command, output)) = run(check, staged.path())
    {
        return Err(Error::CheckFailed { command, dest: resource.dest.clone(), output });
    }
    staged
        .persist(&resource.dest)
        .map_err(|e| Error::Io { what: format!("installing {}", resource.dest.display()), source: e.error })?;
    tracing::info!(dest = %resource.dest.display(), "installed");
    if let Some(reload) = &resource.reload_cmd
        && let Err((command, output)) = run(reload, &resource.dest)
    {
        return Err(Error::ReloadFailed { command, dest: resource.dest.clone(), output });
    }
    Ok(Outcome::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(dir: &Path, check: Option<&str>, reload: Option<&str>) -> TemplateResource {
        TemplateResource {
            src: "t.j2".into(),
            dest: dir.join("out.conf"),
            keys: vec![],
            mode: 0o640,
            check_cmd: check.map(str::to_owned),
            reload_cmd: reload.map(str::to_owned),
        }
    }

    #[test]
    fn renders_checks_installs_and_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = dir.path().join("reloads");
        let r = resource(dir.path(), Some("grep -q peer {src}"), Some(&format!("echo x >> {}", reloads.display())));
        let ctx = serde_json::json!({"peers": ["10.0.0.1", "10.0.0.2"]});
        let template = "{% for p in peers %}peer {{ p }}\n{% endfor %}";
        assert_eq!(render(&r, template, &ctx).unwrap(), Outcome::Installed);
        assert_eq!(std::fs::read_to_string(&r.dest).unwrap(), "peer 10.0.0.1\npeer 10.0.0.2\n");
        assert_eq!(std::fs::metadata(&r.dest).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(render(&r, template, &ctx).unwrap(), Outcome::Unchanged);
        assert_eq!(std::fs::read_to_string(&reloads).unwrap().lines().count(), 1, "reloaded only when it changed");
        // Nothing but the destination and the reload log: no staged files left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_refused_file_is_never_installed() {
        let dir = tempfile::tempdir().unwrap();
        let r = resource(dir.path(), Some("grep -q peer {src}"), None);
        render(&r, "peer 1\n", &serde_json::json!({})).unwrap();
        let e = render(&r, "garbage\n", &serde_json::json!({})).unwrap_err();
        assert!(matches!(e, Error::CheckFailed { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&r.dest).unwrap(), "peer 1\n", "the good file stays");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the refused file is gone");
    }

    #[test]
    fn template_errors_name_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let r = resource(dir.path(), None, None);
        let e = render(&r, "{{ missing.field }}", &serde_json::json!({})).unwrap_err();
        assert!(e.to_string().starts_with("template t.j2"), "{e}");
        assert!(!r.dest.exists());
    }
}
