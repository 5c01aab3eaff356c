use std::io::Write;

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};
use crate::config::Settings;

const NATS: &str = "nats://127.0.0.1:4222";

fn args(argv: &[&str]) -> ServeArgs {
    let mut full = vec!["trellis", "serve"];
    full.extend_from_slice(argv);
    match Cli::parse_from(full).command {
        Command::Serve(args) => args,
        _ => panic!("`trellis serve ...` parses as the serve command"),
    }
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn path(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("utf-8 path")
}

fn resolve(argv: &[&str]) -> anyhow::Result<Settings> {
    Settings::resolve(&args(argv))
}

#[track_caller]
fn refused(argv: &[&str], expected: &str) -> String {
    let message = format!("{:#}", resolve(argv).expect_err("refused"));
    assert!(message.contains(expected), "{argv:?}: {message}");
    assert!(!message.contains('\n'), "one line: {message}");
    message
}

#[track_caller]
fn etcd(settings: &Settings) -> &EtcdSettings {
    match &settings.meta {
        MetaBackend::Etcd(etcd) => etcd,
        MetaBackend::Embedded => panic!("expected etcd metadata"),
    }
}

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn metadata_is_embedded_and_the_cluster_has_defaults_without_settings() {
    let settings = resolve(&[]).expect("defaults resolve");
    assert_eq!(settings.meta, MetaBackend::Embedded);
    assert_eq!(settings.meta.describe(), "embedded");
    let cluster = &settings.runtime.cluster;
    assert_eq!(cluster.lease_ttl, Duration::from_secs(5));
    assert_eq!(cluster.advertise_http, None);
    assert_eq!(cluster.advertise_grpc, None);
    // hostname-xxxxxx: a different suffix in every process (here: every resolve).
    let id = cluster.node_id.clone().expect("a node id is made up");
    let (host, suffix) = id.rsplit_once('-').expect("HOST-SUFFIX");
    assert!(!host.is_empty(), "{id}");
    assert_eq!(suffix.len(), 6, "{id}");
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert!(is_node_id(&id), "{id}");
    let again = resolve(&[]).expect("defaults resolve");
    assert_ne!(again.runtime.cluster.node_id, Some(id));
}

#[test]
fn etcd_endpoints_are_parsed_from_the_flag() {
    let settings = resolve(&[
        "--storage",
        NATS,
        "--meta",
        "etcd://10.0.0.1:2379, 10.0.0.2:2379,etcd://etcd-3.internal:2379/",
    ])
    .expect("resolves");
    let etcd = etcd(&settings);
    assert_eq!(
        etcd.endpoints,
        ["10.0.0.1:2379", "10.0.0.2:2379", "etcd-3.internal:2379"]
    );
    assert_eq!(etcd.ca_pem, None);
    assert_eq!(etcd.user, None);
    assert_eq!(
        settings.meta.describe(),
        "etcd://10.0.0.1:2379,10.0.0.2:2379,etcd-3.internal:2379"
    );
    assert_eq!(
        etcd.options().endpoints(),
        ["10.0.0.1:2379", "10.0.0.2:2379", "etcd-3.internal:2379"]
    );
}

#[test]
fn the_file_gives_meta_and_cluster_and_flags_override_it() {
    let ca = file_with(CA);
    let password = file_with("s3cret\n");
    let config = file_with(&format!(
        "[storage]\nurl = \"{NATS}\"\n\
         [meta]\nurl = \"etcd://10.0.0.1:2379\"\nca_file = \"{}\"\nuser = \"trellis\"\npassword_file = \"{}\"\n\
         [cluster]\nnode_id = \"node-a\"\nadvertise_http = \"10.0.0.5:10105\"\nadvertise_grpc = \"10.0.0.5:10205\"\nlease_ttl_ms = 3000\n",
        path(&ca),
        path(&password),
    ));
    let from_file = resolve(&["--config", path(&config)]).expect("file resolves");
    let etcd_settings = etcd(&from_file);
    assert_eq!(etcd_settings.endpoints, ["10.0.0.1:2379"]);
    assert_eq!(etcd_settings.ca_pem.as_deref(), Some(CA.as_bytes()));
    assert_eq!(etcd_settings.user.as_deref(), Some("trellis"));
    assert_eq!(etcd_settings.password.as_deref(), Some("s3cret"));
    // A CA turns TLS on, as etcds:// would.
    assert_eq!(from_file.meta.describe(), "etcds://10.0.0.1:2379");
    let cluster = &from_file.runtime.cluster;
    assert_eq!(cluster.node_id.as_deref(), Some("node-a"));
    assert_eq!(cluster.advertise_http.as_deref(), Some("10.0.0.5:10105"));
    assert_eq!(cluster.advertise_grpc.as_deref(), Some("10.0.0.5:10205"));
    assert_eq!(cluster.lease_ttl, Duration::from_secs(3));

    let flagged = resolve(&[
        "--config",
        path(&config),
        "--meta",
        "etcds://10.0.0.9:2379",
        "--node-id",
        "node-b",
        "--advertise-http",
        "node-b.internal:80",
        "--lease-ttl-ms",
        "1000",
    ])
    .expect("flags resolve");
    assert_eq!(etcd(&flagged).endpoints, ["10.0.0.9:2379"]);
    let cluster = &flagged.runtime.cluster;
    assert_eq!(cluster.node_id.as_deref(), Some("node-b"));
    assert_eq!(
        cluster.advertise_http.as_deref(),
        Some("node-b.internal:80")
    );
    assert_eq!(cluster.advertise_grpc.as_deref(), Some("10.0.0.5:10205"));
    assert_eq!(cluster.lease_ttl, Duration::from_secs(1));

    // A flag back to embedded metadata: the file's etcd options no longer fit.
    refused(
        &["--config", path(&config), "--meta", "embedded"],
        "need etcd metadata",
    );
}

#[test]
fn etcd_with_the_embedded_event_log_is_refused() {
    refused(&["--meta", "etcd://127.0.0.1:2379"], "needs NATS storage");
}

#[test]
fn malformed_meta_urls_are_refused_by_name() {
    for url in [
        "http://127.0.0.1:2379",
        "etcd://",
        "etcd://127.0.0.1",
        "etcd://127.0.0.1:0",
        "etcd://127.0.0.1:2379,",
        "etcd://127.0.0.1:2379/prefix",
        "etcd://127.0.0.1:2379,etcds://127.0.0.2:2379",
        "etcd",
    ] {
        refused(&["--storage", NATS, "--meta", url], "meta must be");
    }
}

#[test]
fn a_password_in_the_url_is_refused_without_being_repeated() {
    let message = refused(
        &[
            "--storage",
            NATS,
            "--meta",
            "etcd://root:hunter2@127.0.0.1:2379",
        ],
        "must not hold a user or password",
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn tls_needs_a_ca_and_the_ca_must_be_pem() {
    refused(
        &["--storage", NATS, "--meta", "etcds://127.0.0.1:2379"],
        "needs --meta-ca",
    );
    refused(
        &[
            "--storage",
            NATS,
            "--meta",
            "etcd://127.0.0.1:2379",
            "--meta-ca",
            "/nonexistent/ca.pem",
        ],
        "/nonexistent/ca.pem",
    );
    let not_pem = file_with("just text");
    refused(
        &[
            "--storage",
            NATS,
            "--meta",
            "etcd://127.0.0.1:2379",
            "--meta-ca",
            path(&not_pem),
        ],
        "holds no PEM certificate",
    );
}

#[test]
fn the_password_file_loses_its_line_break_and_must_be_readable() {
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut argv = vec!["--storage", NATS, "--meta", "etcd://127.0.0.1:2379"];
        argv.extend_from_slice(extra);
        argv
    }
    for (text, expected) in [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw", "pw"),
        (" pw with spaces \n", " pw with spaces "),
        ("pw\n\n", "pw\n"),
    ] {
        let file = file_with(text);
        let settings = resolve(&with(&[
            "--meta-user",
            "root",
            "--meta-password-file",
            path(&file),
        ]))
        .expect("resolves");
        assert_eq!(
            etcd(&settings).password.as_deref(),
            Some(expected),
            "{text:?}"
        );
    }
    refused(
        &with(&[
            "--meta-user",
            "root",
            "--meta-password-file",
            "/nonexistent/pw",
        ]),
        "cannot read the etcd password file /nonexistent/pw",
    );
    let empty = file_with("\n");
    refused(
        &with(&["--meta-user", "root", "--meta-password-file", path(&empty)]),
        "is empty",
    );
    refused(&with(&["--meta-user", "root"]), "--meta-password-file");
    let file = file_with("pw");
    refused(&with(&["--meta-password-file", path(&file)]), "--meta-user");
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let file = file_with("hunter2\n");
    let settings = resolve(&[
        "--storage",
        NATS,
        "--meta",
        "etcd://127.0.0.1:2379",
        "--meta-user",
        "root",
        "--meta-password-file",
        path(&file),
    ])
    .expect("resolves");
    let debug = format!("{settings:?}");
    assert!(debug.contains("root"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!settings.meta.describe().contains("hunter2"));
}

#[test]
fn cluster_values_out_of_shape_are_refused_by_key() {
    refused(&["--lease-ttl-ms", "999"], "cluster.lease_ttl_ms");
    refused(&["--lease-ttl-ms", "3600001"], "cluster.lease_ttl_ms");
    refused(&["--node-id", ""], "node id");
    refused(&["--node-id", "a/b"], "node id");
    refused(&["--node-id", &"n".repeat(129)], "node id");
    refused(&["--advertise-http", "10.0.0.5"], "cluster.advertise_http");
    refused(
        &["--advertise-grpc", "http://10.0.0.5:1"],
        "cluster.advertise_grpc",
    );
    let file = file_with("[cluster]\nlease_ttl = 5\n");
    refused(&["--config", path(&file)], "lease_ttl");
}
