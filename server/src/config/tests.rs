use super::*;

#[test]
fn defaults_match_the_documentation() {
    let config = Config::try_parse_from(["reinsd"]).unwrap();
    assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.default_grace, Duration::from_secs(30));
    assert_eq!(config.retention, Duration::from_secs(24 * 3600));
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    assert!(config.allow_exec.is_empty());
    assert!(config.exec_pass_env.is_empty());
    assert!(config.exec_allow_env.is_empty());
    assert_eq!(config.exec_rlimit, None);
    assert_eq!(config.redis_url, None);
    assert_eq!(config.redis_prefix, "reins:");
    assert_eq!(config.lease_ttl, Duration::from_secs(10));
    assert!(config.worker_kinds.is_empty());
    assert!(config.learn_worker_kinds);
    assert_eq!(config.worker_kind_ttl, Duration::from_secs(600));
    assert_eq!(config.checkpoint_limits(), CheckpointLimits::DEFAULT);
    assert!(!config.replica_id().is_empty());
    let limits = config.connection_limits(1_048_576);
    assert_eq!(limits.max_connections, 4096);
    assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(limits.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(limits.max_age_and_grace, None);
    assert_eq!(config.keepalive_interval, Duration::from_secs(10));
    assert_eq!(config.keepalive_timeout, Duration::from_secs(10));
    assert_eq!(config.max_connection_age, None);
    assert_eq!(config.max_connection_age_grace, None);
}

#[test]
fn keepalive_and_connection_age_flags() {
    let config = Config::try_parse_from([
        "reinsd",
        "--keepalive-interval",
        "2s",
        "--keepalive-timeout",
        "500ms",
        "--max-connection-age",
        "30m",
        "--max-connection-age-grace",
        "1m",
    ])
    .unwrap();
    assert_eq!(config.keepalive_interval, Duration::from_secs(2));
    assert_eq!(config.keepalive_timeout, Duration::from_millis(500));
    assert_eq!(config.max_connection_age, Some(Duration::from_secs(1800)));
    let limits = config.connection_limits(1024);
    assert_eq!(limits.max_age_and_grace, Some(Duration::from_secs(1860)));
    // Without a grace, open calls take as long as they need.
    let config = Config::try_parse_from(["reinsd", "--max-connection-age", "30m"]).unwrap();
    assert_eq!(config.connection_limits(1024).max_age_and_grace, None);
}

#[test]
fn connection_limits_from_flags() {
    let config = Config::try_parse_from([
        "reinsd",
        "--max-connections",
        "10",
        "--handshake-timeout",
        "500ms",
        "--idle-timeout",
        "0s",
    ])
    .unwrap();
    let limits = config.connection_limits(64);
    assert_eq!(limits.max_connections, 10);
    assert_eq!(limits.handshake_timeout, Duration::from_millis(500));
    assert_eq!(limits.idle_timeout, None);
    let default = Config::try_parse_from(["reinsd"]).unwrap();
    assert_eq!(default.connection_limits(1024).max_connections, 512);
}

#[test]
fn redis_prefixes_with_braces_and_shard_counts_out_of_range_are_refused() {
    for (flag, value, why) in [
        ("--redis-prefix", "app{1}:", "may not hold"),
        ("--redis-shards", "0", "0 is not in 1..=256"),
        ("--redis-shards", "257", "257 is not in 1..=256"),
    ] {
        let err = Config::try_parse_from(["reinsd", flag, value]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(flag) && message.contains(why), "{message}");
    }
    let config = Config::try_parse_from(["reinsd", "--redis-shards", "64"]).unwrap();
    assert_eq!(config.redis_shards, 64);
}

#[test]
fn bad_connection_limits_are_refused() {
    for (flag, value, why) in [
        ("--max-connections", "0", "0 is not in 1.."),
        ("--max-connections", "many", "invalid digit"),
        ("--handshake-timeout", "0s", "must be more than 0"),
        ("--handshake-timeout", "10", "time unit needed"),
        ("--idle-timeout", "soon", "expected number"),
        ("--keepalive-interval", "0s", "must be more than 0"),
        ("--keepalive-timeout", "0ms", "must be more than 0"),
        ("--max-connection-age", "0s", "must be more than 0"),
        ("--max-connection-age-grace", "1m", "--max-connection-age"),
    ] {
        let err = Config::try_parse_from(["reinsd", flag, value]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(flag) && message.contains(why), "{message}");
    }
}

#[test]
fn worker_kind_flags_take_a_bool_a_ttl_and_plain_kind_names() {
    let config = Config::try_parse_from([
        "reinsd",
        "--learn-worker-kinds=false",
        "--worker-kind-ttl",
        "90s",
        "--worker-kind",
        "research,team/agent.v2",
    ])
    .unwrap();
    assert!(!config.learn_worker_kinds);
    assert_eq!(config.worker_kind_ttl, Duration::from_secs(90));
    assert_eq!(config.worker_kinds, ["research", "team/agent.v2"]);
    let config = Config::try_parse_from(["reinsd", "--learn-worker-kinds", "true"]).unwrap();
    assert!(config.learn_worker_kinds);
    for bad in [
        &["--learn-worker-kinds", "maybe"][..],
        &["--worker-kind-ttl", "500ms"],
        &["--worker-kind", "has space"],
        &["--worker-kind", &"x".repeat(129)],
    ] {
        let args = std::iter::once("reinsd").chain(bad.iter().copied());
        assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
    }
}

#[test]
fn human_durations_and_repeated_allowlist_entries() {
    let config = Config::try_parse_from([
        "reinsd",
        "--default-grace",
        "500ms",
        "--retention",
        "2m",
        "--allow-exec",
        "sh",
        "--allow-exec",
        "/bin/sh",
    ])
    .unwrap();
    assert_eq!(config.default_grace, Duration::from_millis(500));
    assert_eq!(config.retention, Duration::from_secs(120));
    let allowed = all(&config.allow_exec);
    let given: Vec<&str> = allowed.iter().map(|p| p.given.as_str()).collect();
    assert_eq!(given, ["sh", "/bin/sh"]);
    assert!(allowed.iter().all(|p| p.path.is_absolute()));
}

#[test]
fn exec_allowlist_entries_that_name_no_program_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "").unwrap();
    let data = data.to_str().unwrap();
    for entry in [
        "./run.sh",
        "bin/run.sh",
        "surely-no-such-program-here",
        "/etc",
        data,
    ] {
        let err = Config::try_parse_from(["reinsd", "--allow-exec", entry]).unwrap_err();
        assert!(err.to_string().contains(entry), "{err}");
    }
    let err = Config::try_parse_from(["reinsd", "--allow-exec", "./run.sh"]).unwrap_err();
    assert!(err.to_string().contains("relative path"), "{err}");
}

#[test]
fn empty_exec_lists_are_empty_not_one_bad_entry() {
    let config = Config::try_parse_from([
        "reinsd",
        "--allow-exec",
        "",
        "--allow-exec",
        "sh,,date,",
        "--exec-pass-env",
        "",
        "--exec-rlimit",
        "",
    ])
    .unwrap();
    let given: Vec<String> = all(&config.allow_exec)
        .into_iter()
        .map(|p| p.given)
        .collect();
    assert_eq!(given, ["sh", "date"]);
    assert!(all(&config.exec_pass_env).is_empty());
    assert_eq!(config.exec_rlimit, Some(Rlimits::default()));
}

#[test]
fn exec_env_names_and_limits_are_checked_at_startup() {
    let config = Config::try_parse_from([
        "reinsd",
        "--exec-pass-env",
        "HOME,LANG",
        "--exec-allow-env",
        "LD_LIBRARY_PATH",
        "--exec-rlimit",
        "cpu=10s,nofile=256",
    ])
    .unwrap();
    let names = |lists: &[CommaList<EnvName>]| -> Vec<String> {
        all(lists).into_iter().map(|EnvName(name)| name).collect()
    };
    assert_eq!(names(&config.exec_pass_env), ["HOME", "LANG"]);
    assert_eq!(names(&config.exec_allow_env), ["LD_LIBRARY_PATH"]);
    assert_eq!(config.exec_rlimit.unwrap().to_string(), "cpu=10,nofile=256");
    assert!(Config::try_parse_from(["reinsd", "--exec-pass-env", "A=B"]).is_err());
    assert!(Config::try_parse_from(["reinsd", "--exec-allow-env", "PATH,=X"]).is_err());
    let err = Config::try_parse_from(["reinsd", "--exec-rlimit", "nofile=lots"]).unwrap_err();
    assert!(err.to_string().contains("not a whole number"), "{err}");
}

#[test]
fn durations_beyond_the_protobuf_range_are_refused() {
    assert!(Config::try_parse_from(["reinsd", "--default-grace", "20000years"]).is_err());
}

#[test]
fn replica_ids_must_be_non_empty_and_key_safe() {
    for bad in ["", "a b", "a:b", "ä", &"x".repeat(254)] {
        assert!(
            Config::try_parse_from(["reinsd", "--replica-id", bad]).is_err(),
            "{bad:?}"
        );
    }
    let config = Config::try_parse_from(["reinsd", "--replica-id", "reins-7d9f-x2.z_1"]).unwrap();
    assert_eq!(config.replica_id(), "reins-7d9f-x2.z_1");
}

#[test]
fn zero_concurrency_is_refused() {
    assert!(Config::try_parse_from(["reinsd", "--max-concurrency", "0"]).is_err());
}
