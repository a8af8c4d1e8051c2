//! LDAP login against a real OpenLDAP `slapd`, started for this test on a random port with
//! a throwaway config and seeded with `slapadd`. Without slapd installed the test skips
//! with a notice, except with CI=true, where it fails.
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
    port: u16,
    _dir: tempfile::TempDir,
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

fn start_slapd() -> Slapd {
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
    // A free port: bind to 0, read it, release it for slapd.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(SLAPD)
        .arg("-h")
        .arg(format!("ldap://127.0.0.1:{port}/"))
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
        _dir: dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return slapd;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("slapd did not start listening on port {port}");
}

fn config(port: u16, operators_role: Role) -> LdapConfig {
    LdapConfig {
        url: format!("ldap://127.0.0.1:{port}"),
        starttls: false,
        no_tls_verify: false,
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
