//! The `weft` binary against the real world's conditions: a node serving TLS with a
//! private CA, a node that accepts connections and never answers (timeouts and retries
//! from the flags), and the CLI's findings of issue 21 (what a failed command leaves
//! behind, read commands on a missing store, errors that say what happened).

mod cli_support;

use std::net::TcpListener;
use std::time::Duration;

use cli_support::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Writes a CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`node.crt`,
/// `node.key`) into the env's directory.
fn write_pki(env: &Env) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(env.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(env.path("node.crt"), cert.pem()).unwrap();
    std::fs::write(env.path("node.key"), key.serialize_pem()).unwrap();
}

#[test]
fn sync_over_tls_with_the_nodes_ca_and_a_clear_refusal_without_it() {
    let mut env = Env::new();
    write_pki(&env);
    let node = env.serve("node", &["--tls-cert", "node.crt", "--tls-key", "node.key"]);
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    let token = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
    ]);
    env.set("WEFT_TOKEN", token.stdout.trim());
    env.set("WEFT_NODE", &node.url);
    env.set("WEFT_TENANT", "demo");

    env.ok(&["put", "--store", "a", "greeting", "hello over tls"]);
    env.ok(&["sync", "--store", "a", "--tls-ca", "ca.pem"]);
    env.ok(&["sync", "--store", "b", "--tls-ca", "ca.pem"]);
    let got = env.ok(&["get", "--store", "b", "greeting"]);
    assert_eq!(got.stdout.trim(), "hello over tls");

    // Without the CA the node's certificate is not trusted: exit 3, saying why.
    let r = env.fails(3, &["sync", "--store", "c"]);
    assert!(
        r.stderr.contains("certificate is not trusted"),
        "{}",
        r.report()
    );
    // Plain http:// to the TLS node: told to use https://.
    let plain = node.url.replace("https://", "http://");
    let r = env.run(&["sync", "--store", "d", "--node", &plain]);
    assert_ne!(r.code, 0, "{}", r.report());
    assert!(
        r.stderr.contains("use an https:// endpoint"),
        "{}",
        r.report()
    );
    // A TLS flag without its pair is a usage error.
    env.fails(2, &["serve", "--data-dir", "n2", "--tls-cert", "node.crt"]);
}

/// A node that accepts connections and never answers: `--timeout` and `--retries` bound
/// the wait, and the error states all of it.
#[test]
fn timeout_and_retries_from_the_flags_and_the_whole_wait_in_the_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = std::thread::spawn(move || {
        let mut open = Vec::new();
        for tcp in listener.incoming().take(16) {
            open.push(tcp);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut env = Env::new();
    env.set("WEFT_TENANT", "demo");
    let key = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "k",
        "--create-key",
        "--tenant",
        "demo",
    ]);
    env.set("WEFT_TOKEN", key.stdout.trim());
    let node = format!("http://{addr}");
    let r = env.fails(
        3,
        &[
            "health",
            "--node",
            &node,
            "--timeout",
            "0.3",
            "--retries",
            "1",
        ],
    );
    assert!(
        r.stderr.contains("no answer after 2 attempts over"),
        "{}",
        r.report()
    );
    assert!(r.stderr.contains("(each allowed 0.3 s)"), "{}", r.report());
    env.fails(2, &["health", "--node", &node, "--timeout", "0"]);
    drop(hold);
}

/// `token issue` signs with the node's key: a missing key file is an error (a new key
/// would make tokens the node refuses), unless `--create-key` asks for one.
#[test]
fn token_issue_refuses_a_missing_key_file_unless_asked_to_create_one() {
    let env = Env::new();
    let r = env.fails(
        5,
        &["token", "issue", "--key-file", "nokey", "--tenant", "demo"],
    );
    assert!(r.stderr.contains("no key file at"), "{}", r.report());
    assert!(r.stderr.contains("--create-key"), "{}", r.report());
    assert!(r.stdout.is_empty(), "{}", r.report());
    assert!(!env.path("nokey").exists());
    let r = env.ok(&["token", "issue", "--key-file", "nokey", "--create-key"]);
    assert!(env.path("nokey").exists());
    // The same key signs the next token without the flag.
    let again = env.ok(&["token", "issue", "--key-file", "nokey"]);
    assert!(!r.stdout.trim().is_empty() && !again.stdout.trim().is_empty());
}
