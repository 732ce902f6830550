//! Which file an `exec` task runs: `argv[0]` resolved on the **server's** `PATH` (never the
//! client's) and compared, as an absolute path, with the operator's `--allow-exec` entries,
//! which are resolved the same way once at startup.
//!
//! A resolved path is the directory canonicalised (every symlink and `..` resolved) joined
//! with the file name as given: `/bin/sh` and `/usr/bin/sh` are one entry where `/bin` links
//! to `/usr/bin`, but `sh` and `dash` stay two even when `sh` links to `dash`. Canonicalising
//! the file name too would make every name of a multi-call binary one entry: on a busybox
//! system (`/bin/rm` → `/bin/busybox`, `/bin/sh` → `/bin/busybox`) allowing `sh` would allow
//! `rm`, as busybox picks its applet from the name it was run by.
//!
//! Relative paths with a slash (`./run.sh`, `bin/tool`) are refused: in an allowlist entry
//! they would depend on the server's working directory, in a task's `argv[0]` on the
//! client's `cwd`, which is how a planted script got run.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// `PATH` when the server has none: the usual system directories.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The directories bare program names are looked up in: the server's `PATH` without its
/// relative entries (an empty entry or `.` would mean the task's `cwd`, which the client
/// picks), or [`FALLBACK_PATH`] if that leaves nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPath(Vec<PathBuf>);

impl SearchPath {
    pub fn of_server() -> SearchPath {
        SearchPath::parse(std::env::var_os("PATH").as_deref())
    }

    fn parse(path: Option<&std::ffi::OsStr>) -> SearchPath {
        let absolute: Vec<PathBuf> = path
            .map(|path| {
                std::env::split_paths(path)
                    .filter(|dir| dir.is_absolute())
                    .collect()
            })
            .unwrap_or_default();
        if absolute.is_empty() {
            SearchPath(std::env::split_paths(FALLBACK_PATH).collect())
        } else {
            SearchPath(absolute)
        }
    }

    /// The `PATH` value a task gets.
    pub fn to_env_value(&self) -> OsString {
        std::env::join_paths(&self.0).expect("absolute directories taken from a PATH")
    }
}

/// Why a program name does not name a file that could run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("a relative path; give an absolute path or a bare name looked up on the server's PATH")]
    Relative,
    #[error("not found on the server's PATH")]
    NotFound,
    #[error("not an executable file")]
    NotExecutable,
}

/// Resolves `program` as the server would run it: a bare name on `search`, an absolute path
/// as it is; see the module docs for how symlinks count.
pub fn resolve(program: &str, search: &SearchPath) -> Result<PathBuf, Unresolved> {
    let found = if program.contains('/') {
        let path = Path::new(program);
        if !path.is_absolute() {
            return Err(Unresolved::Relative);
        }
        path.to_path_buf()
    } else {
        search
            .0
            .iter()
            .map(|dir| dir.join(program))
            .find(|candidate| !program.is_empty() && is_executable_file(candidate))
            .ok_or(Unresolved::NotFound)?
    };
    let (Some(dir), Some(name)) = (found.parent(), found.file_name()) else {
        return Err(Unresolved::NotExecutable);
    };
    let resolved = dir
        .canonicalize()
        .map_err(|_| Unresolved::NotFound)?
        .join(name);
    if is_executable_file(&resolved) {
        Ok(resolved)
    } else {
        Err(Unresolved::NotExecutable)
    }
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// One `--allow-exec` entry, resolved at startup; parsing fails for entries that name no
/// executable file, so a typo or a relative path stops the server with a clear message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedProgram {
    /// The entry as the operator wrote it, for messages.
    pub given: String,
    pub path: PathBuf,
}

impl FromStr for AllowedProgram {
    type Err = String;

    fn from_str(given: &str) -> Result<AllowedProgram, String> {
        let path = resolve(given, &SearchPath::of_server()).map_err(|why| format!("{why}"))?;
        Ok(AllowedProgram {
            given: given.to_owned(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn program(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn search(dirs: &[&Path]) -> SearchPath {
        SearchPath(dirs.iter().map(|dir| dir.to_path_buf()).collect())
    }

    #[test]
    fn bare_names_are_found_on_the_search_path_in_order() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let real = first.path().canonicalize().unwrap();
        program(first.path(), "tool");
        program(second.path(), "tool");
        program(second.path(), "other");
        let path = search(&[first.path(), second.path()]);
        assert_eq!(resolve("tool", &path), Ok(real.join("tool")));
        assert_eq!(
            resolve("other", &path),
            Ok(second.path().canonicalize().unwrap().join("other"))
        );
        assert_eq!(resolve("missing", &path), Err(Unresolved::NotFound));
        assert_eq!(resolve("", &path), Err(Unresolved::NotFound));
    }

    #[test]
    fn files_that_cannot_run_are_not_programs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), "").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let path = search(&[dir.path()]);
        assert_eq!(resolve("data", &path), Err(Unresolved::NotFound));
        assert_eq!(resolve("subdir", &path), Err(Unresolved::NotFound));
        let absolute = dir.path().join("data");
        assert_eq!(
            resolve(absolute.to_str().unwrap(), &path),
            Err(Unresolved::NotExecutable)
        );
    }

    #[test]
    fn relative_paths_are_refused_whatever_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        program(dir.path(), "run.sh");
        let path = search(&[dir.path()]);
        for relative in ["./run.sh", "run.sh/", "sub/run.sh", "../run.sh"] {
            assert_eq!(
                resolve(relative, &path),
                Err(Unresolved::Relative),
                "{relative}"
            );
        }
    }

    #[test]
    fn directory_symlinks_resolve_but_file_names_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        std::fs::create_dir(&real_dir).unwrap();
        let target = program(&real_dir, "busybox");
        symlink(&target, real_dir.join("sh")).unwrap();
        symlink(&real_dir, dir.path().join("linked")).unwrap();
        let real = real_dir.canonicalize().unwrap();
        let path = search(&[]);
        let via_linked_dir = dir.path().join("linked/sh");
        assert_eq!(
            resolve(via_linked_dir.to_str().unwrap(), &path),
            Ok(real.join("sh")),
            "the same entry through a linked directory"
        );
        let dotted = real_dir.join("../real/sh");
        assert_eq!(
            resolve(dotted.to_str().unwrap(), &path),
            Ok(real.join("sh"))
        );
        assert_ne!(
            resolve(target.to_str().unwrap(), &path).unwrap(),
            real.join("sh"),
            "a link's target is another entry than the link"
        );
    }

    #[test]
    fn relative_and_empty_search_path_entries_are_dropped() {
        let path = SearchPath::parse(Some("/opt/bin::.:bin:/usr/bin".as_ref()));
        assert_eq!(path, SearchPath(vec!["/opt/bin".into(), "/usr/bin".into()]));
        assert_eq!(path.to_env_value(), "/opt/bin:/usr/bin");
        assert_eq!(
            SearchPath::parse(Some(".:".as_ref())).to_env_value(),
            FALLBACK_PATH
        );
        assert_eq!(SearchPath::parse(None).to_env_value(), FALLBACK_PATH);
    }
}
