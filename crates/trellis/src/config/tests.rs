use std::io::Write;

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

fn args(argv: &[&str]) -> ServeArgs {
    let mut full = vec!["trellis", "serve"];
    full.extend_from_slice(argv);
    match Cli::parse_from(full).command {
        Command::Serve(args) => args,
        _ => panic!("`trellis serve ...` parses as the serve command"),
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

#[test]
fn defaults_without_file_or_flags() {
    let settings = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(settings.data_dir, PathBuf::from("./trellis-data"));
    assert_eq!(settings.http_addr.to_string(), "127.0.0.1:10105");
    assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:10205");
    assert_eq!(
        settings.runtime.default_topic.durability,
        DurabilityPolicy::Always
    );
    assert_eq!(settings.runtime.max_event_bytes, 1024 * 1024);
    assert!(settings.runtime.auto_create_topics);
}

#[test]
fn flags_override_the_file() {
    let file = config_file("http_addr = \"127.0.0.1:9000\"\n[storage]\nfsync = \"never\"\n");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(from_file.http_addr.to_string(), "127.0.0.1:9000");
    assert_eq!(
        from_file.runtime.default_topic.durability,
        DurabilityPolicy::Never
    );

    let flagged = Settings::resolve(&args(&[
        "--config",
        path,
        "--http-addr",
        "127.0.0.1:9001",
        "--fsync",
        "interval",
    ]))
    .expect("flags resolve");
    assert_eq!(flagged.http_addr.to_string(), "127.0.0.1:9001");
    assert_eq!(
        flagged.runtime.default_topic.durability,
        DurabilityPolicy::Interval
    );
}

#[test]
fn unknown_keys_in_the_file_are_refused_with_their_line() {
    let file = config_file("data_dir = \"x\"\nhtp_addr = \"127.0.0.1:1\"\n");
    let error = Settings::resolve(&args(&[
        "--config",
        file.path().to_str().expect("utf-8 path"),
    ]))
    .expect_err("typo must fail");
    let text = format!("{error:#}");
    assert!(
        text.contains("line 2") && text.contains("htp_addr"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn bad_address_names_the_key() {
    let error = Settings::resolve(&args(&["--http-addr", "localhost"])).expect_err("must fail");
    assert!(format!("{error:#}").contains("http_addr"), "{error:#}");
}

#[test]
fn missing_config_file_is_an_error() {
    let error = Settings::resolve(&args(&["--config", "/nonexistent/trellis.toml"]))
        .expect_err("must fail");
    assert!(
        format!("{error:#}").contains("cannot read config file"),
        "{error:#}"
    );
}

#[test]
fn the_webhook_deny_list_comes_from_the_file() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert!(
        defaults
            .runtime
            .webhook_deny
            .contains(&"169.254.0.0/16".parse().expect("a range"))
    );

    let file = config_file("[delivery]\nwebhook_deny = [\"10.0.0.0/8\"]\n");
    let path = file.path().to_str().expect("utf-8 path");
    let settings = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(
        settings.runtime.webhook_deny,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().expect("a range")]
    );

    let file = config_file("[delivery]\nwebhook_deny = [\"10.0.0.0/33\"]\n");
    let path = file.path().to_str().expect("utf-8 path");
    let error = Settings::resolve(&args(&["--config", path])).expect_err("must fail");
    assert!(
        format!("{error:#}").contains("delivery.webhook_deny"),
        "{error:#}"
    );
}

#[test]
fn a_webhook_ca_file_is_read_when_the_configuration_is() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert!(
        defaults.runtime.webhook_tls.is_none(),
        "system roots by default"
    );

    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).expect("a CA certificate");
    let ca_file = config_file(&ca.pem());
    let file = config_file(&format!(
        "[delivery]\nwebhook_ca_file = {:?}\n",
        ca_file.path().to_str().expect("utf-8 path")
    ));
    let path = file.path().to_str().expect("utf-8 path");
    let settings = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert!(settings.runtime.webhook_tls.is_some());

    // Refused with the other configuration errors, before anything listens.
    let file = config_file("[delivery]\nwebhook_ca_file = \"/nonexistent/ca.pem\"\n");
    let path = file.path().to_str().expect("utf-8 path");
    let error = Settings::resolve(&args(&["--config", path])).expect_err("must fail");
    let message = format!("{error:#}");
    assert!(
        message.contains("delivery.webhook_ca_file") && message.contains("/nonexistent/ca.pem"),
        "{message}"
    );
}

#[test]
fn dedup_settings_come_from_file_env_and_flags() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(defaults.runtime.dedup_window, Duration::from_secs(600));
    assert_eq!(defaults.runtime.dedup_max_entries, 1_000_000);

    let file = config_file(
        "[dedup]\nwindow_ms = 5000\nmax_entries = 10\n[grpc]\nmax_batches_in_flight = 3\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(from_file.runtime.dedup_window, Duration::from_secs(5));
    assert_eq!(from_file.runtime.dedup_max_entries, 10);
    assert_eq!(from_file.runtime.grpc_max_batches_in_flight, 3);

    let flagged = Settings::resolve(&args(&["--config", path, "--dedup-window-ms", "0"]))
        .expect("flags resolve");
    assert_eq!(flagged.runtime.dedup_window, Duration::ZERO);
}

#[test]
fn connection_limits_and_the_shutdown_timeout_come_from_file_and_flags() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(
        defaults.runtime.shutdown_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(defaults.runtime.http_connections.max_connections, 4096);

    let file = config_file(
        "shutdown_timeout_ms = 5000\n[http]\nmax_connections = 7\nheader_read_timeout_ms = 0\n\
         idle_timeout_ms = 1500\n[grpc]\nmax_connections = 3\nidle_timeout_ms = 0\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    let http = &from_file.runtime.http_connections;
    assert_eq!(http.max_connections, 7);
    assert_eq!(http.header_read_timeout, None, "0 turns a timeout off");
    assert_eq!(
        http.idle_timeout,
        Some(std::time::Duration::from_millis(1500))
    );
    assert_eq!(from_file.runtime.grpc_connections.max_connections, 3);
    assert_eq!(from_file.runtime.grpc_connections.idle_timeout, None);
    assert_eq!(
        from_file.runtime.shutdown_timeout,
        std::time::Duration::from_secs(5)
    );

    let flagged = Settings::resolve(&args(&["--config", path, "--shutdown-timeout-ms", "250"]))
        .expect("flags resolve");
    assert_eq!(
        flagged.runtime.shutdown_timeout,
        std::time::Duration::from_millis(250)
    );

    let zero = config_file("[http]\nmax_connections = 0\n");
    let error = Settings::resolve(&args(&[
        "--config",
        zero.path().to_str().expect("utf-8 path"),
    ]))
    .expect_err("no connections at all is refused");
    assert!(
        error.to_string().contains("http.max_connections"),
        "{error}"
    );
}

#[test]
fn the_json_depth_limit_comes_from_the_file_and_must_be_positive() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(defaults.runtime.max_json_depth, 64);

    let file = config_file("[http]\nmax_json_depth = 8\n");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(from_file.runtime.max_json_depth, 8);

    let zero = config_file("[http]\nmax_json_depth = 0\n");
    let path = zero.path().to_str().expect("utf-8 path");
    let error = Settings::resolve(&args(&["--config", path])).expect_err("0 is refused");
    assert!(
        error.to_string().contains("http.max_json_depth"),
        "{error:#}"
    );
}

#[test]
fn topic_limits_come_from_the_file_and_nonsense_is_refused() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(defaults.runtime.max_topics, 10_000);
    assert_eq!(defaults.log_resources, LogResources::default());

    let file =
        config_file("[topics]\nmax_topics = 50000\nwriter_threads = 2\nmax_open_files = 100\n");
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(from_file.runtime.max_topics, 50_000);
    assert_eq!(from_file.log_resources.writer_threads, 2);
    assert_eq!(from_file.log_resources.max_open_files, 100);

    for (text, key) in [
        ("[topics]\nmax_topics = 0\n", "topics.max_topics"),
        ("[topics]\nwriter_threads = 0\n", "topics.writer_threads"),
        ("[topics]\nmax_open_files = 3\n", "topics.max_open_files"),
    ] {
        let file = config_file(text);
        let path = file.path().to_str().expect("utf-8 path");
        let message = Settings::resolve(&args(&["--config", path]))
            .expect_err("refused")
            .to_string();
        assert!(message.contains(key), "{message}");
    }
}

#[test]
fn storage_is_embedded_unless_nats_urls_are_given_by_flag_or_file() {
    let defaults = Settings::resolve(&args(&[])).expect("defaults resolve");
    assert_eq!(defaults.storage, StorageBackend::Embedded);

    let from_flags = Settings::resolve(&args(&[
        "--storage",
        "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
        "--nats-creds",
        "/etc/trellis/nats.creds",
    ]))
    .expect("flags resolve");
    assert_eq!(
        from_flags.storage,
        StorageBackend::Nats {
            urls: "nats://10.0.0.1:4222, nats://10.0.0.2:4222".to_owned(),
            credentials: Some(PathBuf::from("/etc/trellis/nats.creds")),
            tls_ca: None,
            replicas: 1,
        }
    );

    let file = config_file(
        "[storage]\nurl = \"tls://nats.internal:4222\"\nnats_tls_ca = \"ca.pem\"\nnats_replicas = 3\n",
    );
    let path = file.path().to_str().expect("utf-8 path");
    let from_file = Settings::resolve(&args(&["--config", path])).expect("file resolves");
    assert_eq!(
        from_file.storage,
        StorageBackend::Nats {
            urls: "tls://nats.internal:4222".to_owned(),
            credentials: None,
            tls_ca: Some(PathBuf::from("ca.pem")),
            replicas: 3,
        }
    );
    // A flag overrides the file, back to the embedded log.
    let overridden = Settings::resolve(&args(&["--config", path, "--storage", "embedded"]))
        .expect_err("NATS options without NATS storage");
    assert!(
        overridden.to_string().contains("need NATS storage"),
        "{overridden:#}"
    );
}

#[test]
fn storage_that_is_neither_embedded_nor_nats_is_refused_by_name() {
    for (argv, expected) in [
        (
            vec!["--storage", "http://127.0.0.1:4222"],
            "storage must be",
        ),
        (vec!["--storage", "nats://a:4222,"], "storage must be"),
        (vec!["--storage", "nats://"], "storage must be"),
        (vec!["--nats-creds", "x.creds"], "need NATS storage"),
    ] {
        let message = Settings::resolve(&args(&argv))
            .expect_err("refused")
            .to_string();
        assert!(message.contains(expected), "{argv:?}: {message}");
    }
    let file = config_file("[storage]\nurl = \"nats://127.0.0.1:4222\"\nnats_replicas = 7\n");
    let path = file.path().to_str().expect("utf-8 path");
    let message = Settings::resolve(&args(&["--config", path]))
        .expect_err("refused")
        .to_string();
    assert!(message.contains("storage.nats_replicas"), "{message}");
}

#[test]
fn storage_urls_are_described_without_their_passwords() {
    let settings = Settings::resolve(&args(&[
        "--storage",
        "nats://trellis:s3cret@10.0.0.1:4222,tls://token@10.0.0.2:4222,nats://10.0.0.3:4222",
    ]))
    .expect("resolves");
    let described = settings.storage.describe();
    assert_eq!(
        described,
        "nats://***@10.0.0.1:4222,tls://***@10.0.0.2:4222,nats://10.0.0.3:4222"
    );
    assert_eq!(StorageBackend::Embedded.describe(), "embedded");
}
