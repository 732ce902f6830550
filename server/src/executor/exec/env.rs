//! The environment an `exec` task starts with. Not the server's: that would hand the
//! server's secrets to any client (`sh -c 'echo $SECRET'` puts them in a result everyone
//! may read). A task gets
//!
//! 1. `PATH`: the server's search path ([`SearchPath`], relative entries dropped), the same
//!    one its `argv[0]` was resolved on;
//! 2. the server's own values of the variables the operator passes through
//!    (`--exec-pass-env NAME`; unset ones are skipped);
//! 3. the client's `env`, which wins over both, except for the names in
//!    [`REFUSED_NAMES`] / [`REFUSED_PREFIXES`], which a client may set only when the operator
//!    allows them by name (`--exec-allow-env NAME`). A refused name is INVALID_ARGUMENT
//!    naming `params.env.<NAME>`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::str::FromStr;

use super::program::SearchPath;

/// Variables with which whoever sets them chooses code or configuration that a program
/// loads, or changes how a shell reads its script: through any allowlisted program they
/// would let a client run code of its own (`LD_PRELOAD=/tmp/evil.so`,
/// `BASH_ENV=/tmp/evil.sh`, `PYTHONPATH=/tmp/evil`, `GIT_SSH_COMMAND=…`). The list covers
/// the system loader and the interpreters tasks commonly run (sh/bash, Python, Perl, Ruby,
/// Node, the JVM, Lua, PHP, git, OpenSSL). It cannot know every program's own plugin
/// variable: what an allowlisted program reads is the operator's to judge.
pub const REFUSED_PREFIXES: &[(&str, &str)] = &[
    (
        "LD_",
        "it steers the dynamic loader (libraries loaded into the program)",
    ),
    ("DYLD_", "it steers the macOS dynamic loader"),
    ("BASH_FUNC_", "bash imports it as a shell function"),
    ("GIT_", "git runs commands and reads configuration it names"),
    ("LUA_", "Lua runs or loads code it names"),
];

/// Single names refused for the reasons given with [`REFUSED_PREFIXES`].
pub const REFUSED_NAMES: &[(&str, &str)] = &[
    (
        "PATH",
        "programs the task runs are looked up on the server's PATH",
    ),
    (
        "GCONV_PATH",
        "glibc loads character-set modules (libraries) from it",
    ),
    (
        "GLIBC_TUNABLES",
        "the dynamic loader parses it (CVE-2023-4911)",
    ),
    ("LOCPATH", "glibc loads locale data from it"),
    ("NLSPATH", "programs load message catalogs from it"),
    ("HOSTALIASES", "it redirects host name lookups"),
    ("RESOLV_HOST_CONF", "it redirects host name lookups"),
    ("LOCALDOMAIN", "it changes host name lookups"),
    ("RES_OPTIONS", "it changes host name lookups"),
    ("BASH_ENV", "bash runs the file it names first"),
    ("ENV", "sh runs the file it names first"),
    ("ZDOTDIR", "zsh runs the startup files in it"),
    (
        "SHELLOPTS",
        "it switches shell options on (xtrace runs PS4)",
    ),
    ("BASHOPTS", "it switches shell options on"),
    (
        "PS4",
        "a shell tracing commands expands it, running what it contains",
    ),
    ("IFS", "it changes how the shell splits words"),
    ("CDPATH", "it changes where `cd` goes"),
    ("PYTHONPATH", "Python imports modules from it"),
    ("PYTHONHOME", "Python loads its standard library from it"),
    ("PYTHONSTARTUP", "Python runs the file it names"),
    ("PYTHONUSERBASE", "Python imports modules from it"),
    ("PYTHONPLATLIBDIR", "Python imports modules from it"),
    (
        "PYTHONPYCACHEPREFIX",
        "Python loads compiled modules from it",
    ),
    ("PYTHONBREAKPOINT", "Python imports and calls what it names"),
    ("PERL5LIB", "Perl loads modules from it"),
    ("PERLLIB", "Perl loads modules from it"),
    ("PERL5OPT", "Perl takes options (-M modules) from it"),
    ("PERL5DB", "Perl runs it as its debugger"),
    ("RUBYOPT", "Ruby takes options (-r libraries) from it"),
    ("RUBYLIB", "Ruby loads libraries from it"),
    (
        "NODE_OPTIONS",
        "Node takes options (--require modules) from it",
    ),
    ("NODE_PATH", "Node loads modules from it"),
    (
        "JAVA_TOOL_OPTIONS",
        "the JVM takes options (agents) from it",
    ),
    ("_JAVA_OPTIONS", "the JVM takes options (agents) from it"),
    (
        "JDK_JAVA_OPTIONS",
        "the java launcher takes options (agents) from it",
    ),
    ("CLASSPATH", "the JVM loads classes from it"),
    (
        "PHPRC",
        "PHP reads its configuration (auto_prepend_file) from it",
    ),
    ("PHP_INI_SCAN_DIR", "PHP reads configuration from it"),
    (
        "OPENSSL_CONF",
        "OpenSSL loads engines and providers (libraries) it names",
    ),
    (
        "OPENSSL_ENGINES",
        "OpenSSL loads engines (libraries) from it",
    ),
    (
        "OPENSSL_MODULES",
        "OpenSSL loads providers (libraries) from it",
    ),
];

/// A variable name as the operator gives it (`--exec-pass-env`, `--exec-allow-env`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvName(pub String);

impl FromStr for EnvName {
    type Err = String;

    fn from_str(name: &str) -> Result<EnvName, String> {
        match malformed(name, "") {
            Some(why) => Err(why.to_owned()),
            None => Ok(EnvName(name.to_owned())),
        }
    }
}

/// Why `name=value` cannot be an environment entry at all; `None` if it can.
fn malformed(name: &str, value: &str) -> Option<&'static str> {
    if name.is_empty() || name.contains(['=', '\0']) {
        Some("not a variable name (empty, or contains '=' or NUL)")
    } else if value.contains('\0') {
        Some("the value contains NUL")
    } else {
        None
    }
}

/// Why a client may not set `name` unless the operator allows it; `None` if it may.
fn refusal(name: &str) -> Option<&'static str> {
    REFUSED_NAMES
        .iter()
        .find(|(refused, _)| *refused == name)
        .or_else(|| {
            REFUSED_PREFIXES
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
        })
        .map(|(_, why)| *why)
}

/// The operator's environment policy, with the server's values it passes through taken
/// once at startup.
#[derive(Clone, Debug)]
pub struct EnvPolicy {
    path: OsString,
    passed: Vec<(String, OsString)>,
    client_may_set: BTreeSet<String>,
}

impl EnvPolicy {
    /// `pass`: server variables every task gets (`--exec-pass-env`); `client_may_set`:
    /// refused names clients may set all the same (`--exec-allow-env`).
    pub fn new(
        search_path: &SearchPath,
        pass: &[EnvName],
        client_may_set: &[EnvName],
    ) -> EnvPolicy {
        EnvPolicy {
            path: search_path.to_env_value(),
            passed: pass
                .iter()
                .filter_map(|EnvName(name)| Some((name.clone(), std::env::var_os(name)?)))
                .collect(),
            client_may_set: client_may_set
                .iter()
                .map(|EnvName(name)| name.clone())
                .collect(),
        }
    }

    /// Every client variable this policy refuses, with the reason (for a field violation).
    pub fn refused(&self, client: &BTreeMap<String, String>) -> Vec<(String, String)> {
        client
            .iter()
            .filter_map(|(name, value)| {
                if let Some(problem) = malformed(name, value) {
                    return Some((name.clone(), problem.to_owned()));
                }
                if self.client_may_set.contains(name) {
                    return None;
                }
                let why = refusal(name)?;
                Some((
                    name.clone(),
                    format!(
                        "refused: {why}; the operator may allow it (reinsd --exec-allow-env NAME)"
                    ),
                ))
            })
            .collect()
    }

    /// The whole environment of a task whose client asked for `client` (already checked
    /// with [`EnvPolicy::refused`]).
    pub fn task_env(&self, client: &BTreeMap<String, String>) -> Vec<(OsString, OsString)> {
        let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
        env.insert("PATH".into(), self.path.clone());
        for (name, value) in &self.passed {
            env.insert(name.into(), value.clone());
        }
        for (name, value) in client {
            env.insert(name.into(), value.into());
        }
        env.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(names: &[&str]) -> Vec<EnvName> {
        names.iter().map(|name| EnvName(name.to_string())).collect()
    }

    fn policy(client_may_set: &[&str]) -> EnvPolicy {
        EnvPolicy::new(
            &SearchPath::of_server(),
            &names(&["HOME", "REINS_TEST_SURELY_UNSET"]),
            &names(client_may_set),
        )
    }

    fn refused_names(policy: &EnvPolicy, pairs: &[(&str, &str)]) -> Vec<String> {
        policy
            .refused(&client(pairs))
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn loader_interpreter_and_path_variables_are_refused() {
        let policy = policy(&[]);
        let hijacks = [
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "DYLD_INSERT_LIBRARIES",
            "BASH_ENV",
            "BASH_FUNC_ls%%",
            "ENV",
            "IFS",
            "PYTHONPATH",
            "PERL5OPT",
            "NODE_OPTIONS",
            "JAVA_TOOL_OPTIONS",
            "GIT_SSH_COMMAND",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
        ];
        for name in hijacks {
            assert_eq!(refused_names(&policy, &[(name, "x")]), [name], "{name}");
        }
        let ordinary = [
            ("GREETING", "hi"),
            ("PYTHONUNBUFFERED", "1"),
            ("LANG", "C.UTF-8"),
            ("path", "/tmp"),
            ("MY_LD_PRELOAD", "x"),
        ];
        assert!(refused_names(&policy, &ordinary).is_empty());
    }

    #[test]
    fn malformed_names_and_values_are_refused_even_when_allowed() {
        let policy = policy(&["A=B"]);
        assert_eq!(
            refused_names(&policy, &[("", "x"), ("A=B", "x"), ("OK", "a\0b")]),
            ["", "A=B", "OK"]
        );
    }

    #[test]
    fn operator_names_must_be_variable_names() {
        assert_eq!("HOME".parse(), Ok(EnvName("HOME".into())));
        for bad in ["", "A=B", "A\0"] {
            assert!(bad.parse::<EnvName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_operator_allows_refused_names_one_by_one() {
        let policy = policy(&["LD_LIBRARY_PATH", "PATH"]);
        assert!(
            refused_names(&policy, &[("LD_LIBRARY_PATH", "/opt/lib"), ("PATH", "/x")]).is_empty()
        );
        assert_eq!(
            refused_names(&policy, &[("LD_PRELOAD", "x")]),
            ["LD_PRELOAD"]
        );
        let reasons = policy.refused(&client(&[("LD_PRELOAD", "x")]));
        assert!(reasons[0].1.contains("--exec-allow-env"), "{reasons:?}");
    }

    #[test]
    fn a_task_gets_path_the_passed_variables_and_the_clients_env_only() {
        let policy = policy(&["PATH"]);
        let env: BTreeMap<OsString, OsString> = policy
            .task_env(&client(&[("GREETING", "hi")]))
            .into_iter()
            .collect();
        let mut expected: BTreeMap<OsString, OsString> = BTreeMap::new();
        expected.insert("PATH".into(), SearchPath::of_server().to_env_value());
        if let Some(home) = std::env::var_os("HOME") {
            expected.insert("HOME".into(), home);
        }
        expected.insert("GREETING".into(), "hi".into());
        assert_eq!(env, expected, "unset pass-through variables are skipped");

        let overridden: BTreeMap<OsString, OsString> = policy
            .task_env(&client(&[("PATH", "/client/bin"), ("HOME", "/client")]))
            .into_iter()
            .collect();
        assert_eq!(overridden[&OsString::from("PATH")], "/client/bin");
        assert_eq!(overridden[&OsString::from("HOME")], "/client");
    }
}
