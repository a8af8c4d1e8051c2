//! LDAP login against a real OpenLDAP `slapd`, started for this test on a random port with
//! a throwaway config and seeded with `slapadd`. The TLS tests also make a throwaway CA and
//! server certificate with the `openssl` CLI. Without slapd (or openssl) installed the tests
//! skip with a notice, except with CI=true, where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use relay_auth::ldap::{LdapConfig, LdapDirectory};
use relay_auth::store::memory::MemoryStore;
use relay_auth::{
    AccountService, AuthError, Email, LoginRequest, MemoryOutbox, PasswordHasher, PasswordParams,
    Role, UserSource, UserStore,
};
use relay_core::ManualClock;

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const OPENSSL: &str = "openssl";
const BASE: &str = "dc=example,dc=com";

const SEED: &str = "\
dn: dc=example,dc=com
objectClass: top
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=com
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Liddell
mail: Alice@Example.com
userPassword: alice-directory-pw

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
mail: bob@example.com
userPassword: bob-directory-pw

dn: cn=relay-operators,ou=groups,dc=example,dc=com
objectClass: groupOfNames
cn: relay-operators
member: uid=alice,ou=people,dc=example,dc=com
";

/// A running slapd, killed on drop.
struct Slapd {
    child: Child,
    /// Plain `ldap://` (StartTLS-capable when TLS is configured).
    port: u16,
    /// `ldaps://`, when TLS is configured.
    ldaps_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// Server certificate files for slapd, and the CAs a client may or may not trust.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signed the server certificate.
    ca_pem: String,
    /// A CA that signed nothing slapd has.
    other_ca_pem: String,
}

impl Pki {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn slapd_available() -> bool {
    if Path::new(SLAPD).exists() && Path::new(SLAPADD).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "slapd is not installed (apt-get install slapd ldap-utils); required in CI"
    );
    eprintln!("notice: slapd not installed; skipping the LDAP test");
    false
}

fn openssl_available() -> bool {
    if Command::new(OPENSSL)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the openssl CLI is not installed (apt-get install openssl); required in CI"
    );
    eprintln!("notice: openssl not installed; skipping the LDAP TLS test");
    false
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for ca in ["ca", "other-ca"] {
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=relay test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Pki {
        ca_pem: std::fs::read_to_string(d.join("ca.pem")).unwrap(),
        other_ca_pem: std::fs::read_to_string(d.join("other-ca.pem")).unwrap(),
        dir,
    }
}

fn free_port() -> u16 {
    // Bind to 0, read it, release it for slapd.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_slapd() -> Slapd {
    start_slapd_with(None)
}

/// slapd; with `pki`, it serves TLS (StartTLS on `port`, ldaps on `ldaps_port`) and
/// refuses every operation not protected by TLS (`security tls=1`), so a successful login
/// proves the passwords crossed encrypted.
fn start_slapd_with(pki: Option<&Pki>) -> Slapd {
    let tls_conf = pki.map_or_else(String::new, |pki| {
        format!(
            "TLSCACertificateFile {}\n\
             TLSCertificateFile {}\n\
             TLSCertificateKeyFile {}\n\
             security tls=1\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let conf = dir.path().join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {pid}\n\
             {tls_conf}\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"{BASE}\"\n\
             rootdn \"cn=admin,{BASE}\"\n\
             rootpw admin-secret\n\
             directory {data}\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by * read\n",
            pid = dir.path().join("slapd.pid").display(),
            data = data.display(),
        ),
    )
    .unwrap();
    let seed = dir.path().join("seed.ldif");
    std::fs::write(&seed, SEED).unwrap();
    let out = Command::new(SLAPADD)
        .arg("-f")
        .arg(&conf)
        .arg("-l")
        .arg(&seed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slapadd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let ldaps_port = pki.map(|_| free_port());
    let mut urls = format!("ldap://127.0.0.1:{port}/");
    if let Some(p) = ldaps_port {
        urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
    }
    let child = Command::new(SLAPD)
        .arg("-h")
        .arg(urls)
        .arg("-f")
        .arg(&conf)
        .arg("-d")
        .arg("0") // stay in the foreground, so the child handle owns it
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let slapd = Slapd {
        child,
        port,
        ldaps_port,
        _dir: dir,
    };
    for p in std::iter::once(port).chain(ldaps_port) {
        let listening = (0..200).any(|_| {
            let up = std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if !up {
                std::thread::sleep(Duration::from_millis(50));
            }
            up
        });
        assert!(listening, "slapd did not start listening on port {p}");
    }
    slapd
}

fn config(port: u16, operators_role: Role) -> LdapConfig {
    LdapConfig {
        url: format!("ldap://127.0.0.1:{port}"),
        starttls: false,
        no_tls_verify: false,
        ca_pem: None,
        bind_dn: format!("cn=admin,{BASE}"),
        bind_password: "admin-secret".into(),
        user_base: format!("ou=people,{BASE}"),
        user_filter: "(&(objectClass=inetOrgPerson)(mail={email}))".into(),
        email_attribute: "mail".into(),
        group_base: format!("ou=groups,{BASE}"),
        group_filter: "(&(objectClass=groupOfNames)(member={dn}))".into(),
        group_roles: vec![(
            format!("cn=relay-operators,ou=groups,{BASE}"),
            operators_role,
        )],
        default_role: Some(Role::User),
        timeout: Duration::from_secs(5),
    }
}

fn accounts(store: Arc<MemoryStore>, directory: LdapDirectory) -> AccountService {
    AccountService::new(
        store,
        Arc::new(MemoryOutbox::new()),
        Arc::new(ManualClock::new(Utc::now())),
    )
    .with_hasher(PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS, 2).unwrap())
    .with_ldap(directory)
}

fn login<'a>(email: &'a str, password: &'a str) -> LoginRequest<'a> {
    LoginRequest {
        email,
        password,
        second_factor: None,
        ip: None,
    }
}

#[tokio::test]
async fn ldap_login_creates_and_updates_local_profiles() {
    if !slapd_available() {
        return;
    }
    let slapd = start_slapd();
    let store = Arc::new(MemoryStore::new());
    let acc = accounts(
        store.clone(),
        LdapDirectory::new(config(slapd.port, Role::Operator)).unwrap(),
    );

    // Alice: in the operators group.
    let session = acc
        .login(login("alice@example.com", "alice-directory-pw"))
        .await
        .unwrap();
    let alice = acc.user(&session.user_id).await.unwrap();
    assert_eq!(alice.email, Email::parse("alice@example.com").unwrap());
    assert_eq!(
        (alice.role, alice.source),
        (Role::Operator, UserSource::Ldap)
    );
    assert!(
        alice.password_hash.is_none(),
        "the directory password is never stored"
    );
    assert!(alice.email_verified_at.is_some());

    // Bob: in no mapped group, gets the default role.
    let bob = acc
        .login(login("bob@example.com", "bob-directory-pw"))
        .await
        .unwrap();
    assert_eq!(acc.user(&bob.user_id).await.unwrap().role, Role::User);

    // Wrong password, unknown user, and a filter-injection attempt: all plain failures.
    for (email, pw) in [
        ("alice@example.com", "wrong"),
        ("nobody@example.com", "alice-directory-pw"),
        ("*@example.com", "alice-directory-pw"),
        ("alice@example.com", "bob-directory-pw"),
    ] {
        assert!(
            matches!(
                acc.login(login(email, pw)).await,
                Err(AuthError::InvalidCredentials)
            ),
            "{email} / {pw}"
        );
    }

    // The group mapping changes: the next login updates the same local profile.
    let acc2 = accounts(
        store.clone(),
        LdapDirectory::new(config(slapd.port, Role::Admin)).unwrap(),
    );
    let again = acc2
        .login(login("alice@example.com", "alice-directory-pw"))
        .await
        .unwrap();
    assert_eq!(again.user_id, alice.id);
    assert_eq!(acc2.user(&alice.id).await.unwrap().role, Role::Admin);

    // Local accounts keep working next to the directory.
    acc.create_user("local@example.com", "a local password", Role::User)
        .await
        .unwrap();
    acc.login(login("local@example.com", "a local password"))
        .await
        .unwrap();
    assert!(store
        .user_by_email(&Email::parse("carol@example.com").unwrap())
        .await
        .unwrap()
        .is_none());

    // Directory down: an error that says so, not "wrong password".
    drop(slapd);
    assert!(matches!(
        acc.login(login("bob@example.com", "bob-directory-pw"))
            .await,
        Err(AuthError::Ldap(_))
    ));
}

#[test]
fn filters_need_their_placeholders() {
    let mut c = config(1, Role::User);
    c.user_filter = "(mail=x)".into();
    assert!(matches!(LdapDirectory::new(c), Err(AuthError::Ldap(_))));
    let mut c = config(1, Role::User);
    c.group_filter = "(member=x)".into();
    assert!(matches!(LdapDirectory::new(c), Err(AuthError::Ldap(_))));
}

/// `config` for a TLS connection: StartTLS on the plain port or `ldaps://`, trusting `ca`.
fn tls_config(slapd: &Slapd, starttls: bool, ca: Option<&str>) -> LdapConfig {
    let mut c = config(slapd.port, Role::Operator);
    if starttls {
        c.starttls = true;
    } else {
        c.url = format!("ldaps://127.0.0.1:{}", slapd.ldaps_port.unwrap());
    }
    c.ca_pem = ca.map(str::to_owned);
    c
}

/// The login fails with a directory error (not "wrong password"), and nothing is created.
async fn assert_tls_refused(c: LdapConfig, what: &str, expect_in_error: &str) {
    let store = Arc::new(MemoryStore::new());
    let acc = accounts(store.clone(), LdapDirectory::new(c).unwrap());
    match acc
        .login(login("alice@example.com", "alice-directory-pw"))
        .await
    {
        Err(AuthError::Ldap(msg)) => assert!(
            msg.to_ascii_lowercase().contains(expect_in_error),
            "{what}: error {msg:?} should mention {expect_in_error:?}"
        ),
        other => panic!("{what}: expected a directory error, got {other:?}"),
    }
    assert!(
        store
            .user_by_email(&Email::parse("alice@example.com").unwrap())
            .await
            .unwrap()
            .is_none(),
        "{what}: a refused login creates no profile"
    );
}

#[tokio::test]
async fn ldap_login_over_tls_trusts_only_the_configured_ca() {
    if !slapd_available() || !openssl_available() {
        return;
    }
    let pki = make_pki();
    let slapd = start_slapd_with(Some(&pki));

    // Trusted CA: StartTLS and ldaps both log in. The server refuses anything not under
    // TLS (`security tls=1`), so these binds cannot have crossed in plaintext.
    for starttls in [true, false] {
        let store = Arc::new(MemoryStore::new());
        let c = tls_config(&slapd, starttls, Some(&pki.ca_pem));
        let acc = accounts(store, LdapDirectory::new(c).unwrap());
        let session = acc
            .login(login("alice@example.com", "alice-directory-pw"))
            .await
            .unwrap_or_else(|e| panic!("starttls={starttls}: {e:?}"));
        let alice = acc.user(&session.user_id).await.unwrap();
        assert_eq!(alice.role, Role::Operator, "starttls={starttls}");
        // Wrong password over TLS is still a plain failure, not a directory error.
        assert!(matches!(
            acc.login(login("alice@example.com", "wrong")).await,
            Err(AuthError::InvalidCredentials)
        ));
    }

    // Untrusted: a different CA, or the system roots (which do not know ours). The
    // handshake fails and the login with it; nothing falls back to plaintext.
    for starttls in [true, false] {
        assert_tls_refused(
            tls_config(&slapd, starttls, Some(&pki.other_ca_pem)),
            &format!("other CA, starttls={starttls}"),
            "certificate",
        )
        .await;
        assert_tls_refused(
            tls_config(&slapd, starttls, None),
            &format!("system roots, starttls={starttls}"),
            "certificate",
        )
        .await;
    }

    // The control for `security tls=1`: plain ldap:// without StartTLS is refused by this
    // server (confidentiality required), so the successes above were over TLS.
    assert_tls_refused(
        config(slapd.port, Role::Operator),
        "plaintext against a TLS-only server",
        "confidentiality",
    )
    .await;
}

#[tokio::test]
async fn starttls_against_a_server_without_tls_fails_instead_of_downgrading() {
    if !slapd_available() || !openssl_available() {
        return;
    }
    let pki = make_pki();
    let slapd = start_slapd(); // no TLS configured
    let mut c = config(slapd.port, Role::Operator);
    c.starttls = true;
    c.ca_pem = Some(pki.ca_pem.clone());
    // The server answers the StartTLS request with an LDAP error result (slapd: rc=2,
    // "unsupported extended operation"); the login stops there, before any bind.
    assert_tls_refused(c, "StartTLS without server TLS", "rc=").await;
}

#[test]
fn ca_pem_must_hold_ca_certificates() {
    let with = |pem: &str| {
        let mut c = config(1, Role::User);
        c.ca_pem = Some(pem.into());
        LdapDirectory::new(c)
    };
    for bad in [
        "",
        "not a pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        assert!(
            matches!(with(bad), Err(AuthError::Ldap(ref m)) if m.starts_with("ca_pem:")),
            "{bad:?}"
        );
    }
    // A CA to trust and "trust anything" contradict each other.
    if openssl_available() {
        let pki = make_pki();
        assert!(with(&pki.ca_pem).is_ok());
        let mut c = config(1, Role::User);
        c.ca_pem = Some(pki.ca_pem.clone());
        c.no_tls_verify = true;
        assert!(matches!(LdapDirectory::new(c), Err(AuthError::Ldap(_))));
    }
}
