//! Accounts, sessions, TOTP and throttling through `AccountService`, on the memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use http::Method;
use relay_auth::store::memory::MemoryStore;
use relay_auth::{
    AccountConfig, AccountService, AttemptLimits, AuthError, Email, EmailError, Limit,
    LoginRequest, MemoryOutbox, Notice, PasswordError, PasswordHasher, PasswordParams, Registered,
    ResetRequested, Role, SecretBox, SessionCredential, TokenError,
};
use relay_core::{AccountStatus, ManualClock};
use relay_usage::MemoryThrottle;

struct Fixture {
    accounts: Arc<AccountService>,
    outbox: Arc<MemoryOutbox>,
    clock: ManualClock,
    store: Arc<MemoryStore>,
}

fn fixture_with(config: AccountConfig) -> Fixture {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap());
    let store = Arc::new(MemoryStore::new());
    let outbox = Arc::new(MemoryOutbox::new());
    let accounts = AccountService::new(store.clone(), outbox.clone(), Arc::new(clock.clone()))
        .with_hasher(PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS, 4).unwrap())
        .with_totp(SecretBox::new(&[42u8; 32]).unwrap())
        .with_config(config);
    Fixture {
        accounts: Arc::new(accounts),
        outbox,
        clock,
        store,
    }
}

fn fixture() -> Fixture {
    fixture_with(AccountConfig::default())
}

fn login<'a>(email: &'a str, password: &'a str) -> LoginRequest<'a> {
    LoginRequest {
        email,
        password,
        second_factor: None,
        ip: None,
    }
}

const PW: &str = "correct horse battery";

#[tokio::test]
async fn register_verify_login_logout() {
    let f = fixture();
    assert_eq!(
        f.accounts
            .register("Ann@Example.com", PW, None)
            .await
            .unwrap(),
        Registered
    );
    let email = Email::parse("ann@example.com").unwrap();
    let token = f
        .outbox
        .last_token(&email, false)
        .expect("verification sent");
    let user = f.accounts.verify_email(&token).await.unwrap();
    assert!(f
        .accounts
        .user(&user)
        .await
        .unwrap()
        .email_verified_at
        .is_some());
    // Reused token.
    assert!(matches!(
        f.accounts.verify_email(&token).await,
        Err(AuthError::Token(TokenError::AlreadyUsed))
    ));
    assert!(matches!(
        f.accounts.verify_email("garbage").await,
        Err(AuthError::Token(TokenError::Unknown))
    ));

    let session = f
        .accounts
        .login(login(" ANN@example.com", PW))
        .await
        .unwrap();
    assert_eq!(session.user_id, user);
    assert!(
        !format!("{session:?}").contains(&session.token),
        "token not in Debug"
    );
    let me = f
        .accounts
        .authenticate_session(SessionCredential::Bearer(&session.token))
        .await
        .unwrap();
    assert_eq!(me.user.id, user);

    f.accounts.logout(&session.token).await.unwrap();
    assert!(matches!(
        f.accounts
            .authenticate_session(SessionCredential::Bearer(&session.token))
            .await,
        Err(AuthError::SessionInvalid)
    ));
    // Logging out twice or an unknown token is fine.
    f.accounts.logout(&session.token).await.unwrap();
    f.accounts.logout("rs_nope").await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let f = fixture();
    for (email, err) in [
        ("", EmailError::Empty),
        ("no-at-sign", EmailError::At),
        ("a@b", EmailError::Domain("b".into())),
        ("two@@example.com", EmailError::At),
    ] {
        match f.accounts.register(email, PW, None).await {
            Err(AuthError::InvalidEmail(e)) => assert_eq!(e, err),
            other => panic!("{email:?}: {other:?}"),
        }
    }
    for (pw, err) in [
        ("", PasswordError::Empty),
        ("short", PasswordError::TooShort),
        (&"x".repeat(1025) as &str, PasswordError::TooLong),
    ] {
        match f.accounts.register("bob@example.com", pw, None).await {
            Err(AuthError::InvalidPassword(e)) => assert_eq!(e, err),
            other => panic!("{pw:?}: {other:?}"),
        }
    }
    assert!(f.outbox.sent().is_empty(), "nothing sent");
    let bob = Email::parse("bob@example.com").unwrap();
    use relay_auth::UserStore;
    assert!(
        f.store.user_by_email(&bob).await.unwrap().is_none(),
        "nothing stored"
    );
    // Login with bad input: clear errors, not a lookup.
    assert!(matches!(
        f.accounts.login(login("bob@example.com", "")).await,
        Err(AuthError::InvalidPassword(PasswordError::Empty))
    ));
    assert!(matches!(
        f.accounts
            .login(login("bob@example.com", &"x".repeat(2000)))
            .await,
        Err(AuthError::InvalidPassword(PasswordError::TooLong))
    ));
    assert!(matches!(
        f.accounts.login(login("bob", PW)).await,
        Err(AuthError::InvalidEmail(_))
    ));
}

#[tokio::test]
async fn unicode_passwords_are_normalised() {
    let f = fixture();
    // Registered with a precomposed é and a ligature; logged in with decomposed forms.
    f.accounts
        .register("uni@example.com", "caf\u{e9} \u{FB01}sh pass", None)
        .await
        .unwrap();
    f.accounts
        .login(login("uni@example.com", "cafe\u{301} fish pass"))
        .await
        .unwrap();
    assert!(matches!(
        f.accounts
            .login(login("uni@example.com", "cafe fish pass"))
            .await,
        Err(AuthError::InvalidCredentials)
    ));
}

#[tokio::test]
async fn register_does_not_reveal_known_emails() {
    let f = fixture();
    let a = f
        .accounts
        .register("dup@example.com", PW, None)
        .await
        .unwrap();
    let b = f
        .accounts
        .register("DUP@example.com", "another password", None)
        .await
        .unwrap();
    assert_eq!(a, b, "same answer");
    let sent = f.outbox.sent();
    assert_eq!(sent.len(), 2);
    assert!(matches!(sent[0].1, Notice::VerifyEmail { .. }));
    assert_eq!(sent[1].1, Notice::AlreadyRegistered);
    // The original password still works; the second registration changed nothing.
    f.accounts
        .login(login("dup@example.com", PW))
        .await
        .unwrap();
    assert!(matches!(
        f.accounts
            .login(login("dup@example.com", "another password"))
            .await,
        Err(AuthError::InvalidCredentials)
    ));
    // Unknown email and wrong password: the same error.
    let unknown = f
        .accounts
        .login(login("nobody@example.com", PW))
        .await
        .unwrap_err();
    let wrong = f
        .accounts
        .login(login("dup@example.com", "wrong password"))
        .await
        .unwrap_err();
    assert_eq!(unknown.to_string(), wrong.to_string());
    // Reset: same answer for known and unknown, a notice only for the known one.
    assert_eq!(
        f.accounts
            .request_password_reset("dup@example.com", None)
            .await
            .unwrap(),
        ResetRequested
    );
    assert_eq!(
        f.accounts
            .request_password_reset("nobody@example.com", None)
            .await
            .unwrap(),
        ResetRequested
    );
    assert_eq!(f.outbox.sent().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_email_one_wins() {
    let f = fixture();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let accounts = f.accounts.clone();
        tasks.push(tokio::spawn(async move {
            accounts
                .register("race@example.com", &format!("password number {i}"), None)
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Registered);
    }
    let sent = f.outbox.sent();
    let verify = sent
        .iter()
        .filter(|(_, n)| matches!(n, Notice::VerifyEmail { .. }))
        .count();
    let again = sent
        .iter()
        .filter(|(_, n)| *n == Notice::AlreadyRegistered)
        .count();
    assert_eq!((verify, again), (1, 11));
}

#[tokio::test]
async fn password_reset_is_single_use_expires_and_ends_sessions() {
    let f = fixture();
    f.accounts
        .register("reset@example.com", PW, None)
        .await
        .unwrap();
    let email = Email::parse("reset@example.com").unwrap();
    let s1 = f
        .accounts
        .login(login("reset@example.com", PW))
        .await
        .unwrap();
    let s2 = f
        .accounts
        .login(login("reset@example.com", PW))
        .await
        .unwrap();

    f.accounts
        .request_password_reset("reset@example.com", None)
        .await
        .unwrap();
    let token = f.outbox.last_token(&email, true).unwrap();
    // A bad new password does not burn the token.
    assert!(matches!(
        f.accounts.reset_password(&token, "").await,
        Err(AuthError::InvalidPassword(PasswordError::Empty))
    ));
    f.accounts
        .reset_password(&token, "brand new password")
        .await
        .unwrap();
    assert!(matches!(
        f.accounts
            .reset_password(&token, "yet another password")
            .await,
        Err(AuthError::Token(TokenError::AlreadyUsed))
    ));
    for s in [&s1, &s2] {
        assert!(matches!(
            f.accounts
                .authenticate_session(SessionCredential::Bearer(&s.token))
                .await,
            Err(AuthError::SessionInvalid)
        ));
    }
    assert!(matches!(
        f.accounts.login(login("reset@example.com", PW)).await,
        Err(AuthError::InvalidCredentials)
    ));
    f.accounts
        .login(login("reset@example.com", "brand new password"))
        .await
        .unwrap();

    // Expired token.
    f.accounts
        .request_password_reset("reset@example.com", None)
        .await
        .unwrap();
    let token = f.outbox.last_token(&email, true).unwrap();
    f.clock.advance(Duration::hours(1) + Duration::seconds(1));
    assert!(matches!(
        f.accounts.reset_password(&token, "too late password").await,
        Err(AuthError::Token(TokenError::Expired))
    ));
}

#[tokio::test]
async fn sessions_expire_and_cookies_need_csrf() {
    let f = fixture();
    f.accounts
        .register("csrf@example.com", PW, None)
        .await
        .unwrap();
    let s = f
        .accounts
        .login(login("csrf@example.com", PW))
        .await
        .unwrap();
    let cookie = s.cookie(f.clock_now());
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure")
    );
    let get = Method::GET;
    let post = Method::POST;
    let cred = |method, csrf| SessionCredential::Cookie {
        token: &s.token,
        method,
        csrf_header: csrf,
    };
    f.accounts
        .authenticate_session(cred(&get, None))
        .await
        .unwrap();
    assert!(matches!(
        f.accounts.authenticate_session(cred(&post, None)).await,
        Err(AuthError::CsrfMismatch)
    ));
    assert!(matches!(
        f.accounts
            .authenticate_session(cred(&post, Some("wrong")))
            .await,
        Err(AuthError::CsrfMismatch)
    ));
    f.accounts
        .authenticate_session(cred(&post, Some(&s.csrf_token)))
        .await
        .unwrap();
    // Bearer needs no CSRF token.
    f.accounts
        .authenticate_session(SessionCredential::Bearer(&s.token))
        .await
        .unwrap();
    f.clock.advance(Duration::days(7));
    assert!(matches!(
        f.accounts
            .authenticate_session(SessionCredential::Bearer(&s.token))
            .await,
        Err(AuthError::SessionInvalid)
    ));
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<Utc>;
}
impl ClockNow for Fixture {
    fn clock_now(&self) -> chrono::DateTime<Utc> {
        use relay_core::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn status_changes_are_audited_and_enforced() {
    let f = fixture();
    let admin = f
        .accounts
        .create_user("admin@example.com", PW, Role::Admin)
        .await
        .unwrap();
    let op = f
        .accounts
        .create_user("op@example.com", PW, Role::Operator)
        .await
        .unwrap();
    let user = f
        .accounts
        .create_user("u@example.com", PW, Role::User)
        .await
        .unwrap();
    let s = f.accounts.login(login("u@example.com", PW)).await.unwrap();

    // A plain user may not change anyone's status.
    assert!(matches!(
        f.accounts
            .set_status(Some(&user), &op.id, AccountStatus::Suspended, "no")
            .await,
        Err(AuthError::Forbidden(_))
    ));
    let c = f
        .accounts
        .set_status(
            Some(&op),
            &user.id,
            AccountStatus::Suspended,
            "abuse report",
        )
        .await
        .unwrap();
    assert_eq!(
        (c.from, c.to, c.actor.clone()),
        (
            AccountStatus::Active,
            AccountStatus::Suspended,
            Some(op.id.clone())
        )
    );
    assert!(matches!(
        f.accounts
            .authenticate_session(SessionCredential::Bearer(&s.token))
            .await,
        Err(AuthError::SessionInvalid)
    ));
    assert!(matches!(
        f.accounts.login(login("u@example.com", PW)).await,
        Err(AuthError::AccountDisabled(AccountStatus::Suspended))
    ));
    // Same status again: refused.
    assert!(matches!(
        f.accounts
            .set_status(Some(&op), &user.id, AccountStatus::Suspended, "again")
            .await,
        Err(AuthError::InvalidStatusTransition { .. })
    ));
    f.accounts
        .set_status(None, &user.id, AccountStatus::PastDue, "billing")
        .await
        .unwrap();
    f.accounts
        .login(login("u@example.com", PW))
        .await
        .expect("past due may log in to pay");
    f.accounts
        .set_status(Some(&admin), &user.id, AccountStatus::Closed, "user asked")
        .await
        .unwrap();
    assert!(matches!(
        f.accounts
            .set_status(Some(&admin), &user.id, AccountStatus::Active, "undo")
            .await,
        Err(AuthError::InvalidStatusTransition {
            from: AccountStatus::Closed,
            ..
        })
    ));
    use relay_auth::UserStore;
    let history = f.store.status_history(&user.id).await.unwrap();
    let steps: Vec<_> = history.iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(
        steps,
        vec![
            (AccountStatus::Active, AccountStatus::Suspended),
            (AccountStatus::Suspended, AccountStatus::PastDue),
            (AccountStatus::PastDue, AccountStatus::Closed),
        ]
    );
    assert_eq!(history[1].actor, None);
    // Roles: only admins change them.
    assert!(matches!(
        f.accounts.set_role(&op, &op.id, Role::Admin).await,
        Err(AuthError::Forbidden(_))
    ));
    f.accounts
        .set_role(&admin, &op.id, Role::User)
        .await
        .unwrap();
}

#[tokio::test]
async fn totp_enrol_login_replay_and_recovery() {
    let f = fixture();
    let u = f
        .accounts
        .create_user("totp@example.com", PW, Role::User)
        .await
        .unwrap();
    let e = f.accounts.enrol_totp(&u.id).await.unwrap();
    assert!(
        e.otpauth_uri
            .starts_with("otpauth://totp/relay:totp%40example.com?"),
        "{}",
        e.otpauth_uri
    );
    assert!(e.otpauth_uri.contains("issuer=relay") && e.otpauth_uri.contains(&e.secret_base32));
    assert_eq!(e.recovery_codes.len(), 10);
    // Pending: login does not ask for a code yet.
    f.accounts
        .login(login("totp@example.com", PW))
        .await
        .unwrap();
    let now = || u64::try_from(f.clock_now().timestamp()).unwrap();
    let code = relay_auth::totp::code_at(&e.secret_base32, now()).unwrap();
    assert!(matches!(
        f.accounts.confirm_totp(&u.id, "000000x").await,
        Err(AuthError::InvalidTotp)
    ));
    f.accounts.confirm_totp(&u.id, &code).await.unwrap();
    assert!(matches!(
        f.accounts.enrol_totp(&u.id).await,
        Err(AuthError::TotpAlreadyEnabled)
    ));

    assert!(matches!(
        f.accounts.login(login("totp@example.com", PW)).await,
        Err(AuthError::TotpRequired)
    ));
    // The code used to confirm cannot log in (same step).
    let with = |c: &'static str| LoginRequest {
        second_factor: Some(c),
        ..login("totp@example.com", PW)
    };
    let replay: &'static str = Box::leak(code.clone().into_boxed_str());
    assert!(matches!(
        f.accounts.login(with(replay)).await,
        Err(AuthError::InvalidTotp)
    ));
    // Next step works once, then is a replay.
    f.clock.advance(Duration::seconds(30));
    let next: &'static str = Box::leak(
        relay_auth::totp::code_at(&e.secret_base32, now())
            .unwrap()
            .into_boxed_str(),
    );
    f.accounts.login(with(next)).await.unwrap();
    assert!(matches!(
        f.accounts.login(with(next)).await,
        Err(AuthError::InvalidTotp)
    ));
    // One step of drift is accepted, two are not.
    f.clock.advance(Duration::seconds(60));
    let ahead: &'static str = Box::leak(
        relay_auth::totp::code_at(&e.secret_base32, now() + 30)
            .unwrap()
            .into_boxed_str(),
    );
    f.accounts.login(with(ahead)).await.unwrap();
    f.clock.advance(Duration::seconds(120));
    let stale: &'static str = Box::leak(
        relay_auth::totp::code_at(&e.secret_base32, now() - 60)
            .unwrap()
            .into_boxed_str(),
    );
    assert!(matches!(
        f.accounts.login(with(stale)).await,
        Err(AuthError::InvalidTotp)
    ));
    // Recovery codes: single use, dashes and case do not matter.
    let rc: &'static str = Box::leak(
        e.recovery_codes[0]
            .to_uppercase()
            .replace('-', " ")
            .into_boxed_str(),
    );
    f.accounts.login(with(rc)).await.unwrap();
    assert!(matches!(
        f.accounts.login(with(rc)).await,
        Err(AuthError::InvalidTotp)
    ));
    assert!(matches!(
        f.accounts.login(with("not-a-code")).await,
        Err(AuthError::InvalidTotp)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_totp_code_is_accepted_once() {
    let f = fixture();
    let u = f
        .accounts
        .create_user("race2fa@example.com", PW, Role::User)
        .await
        .unwrap();
    let e = f.accounts.enrol_totp(&u.id).await.unwrap();
    let t = u64::try_from(f.clock_now().timestamp()).unwrap();
    f.accounts
        .confirm_totp(
            &u.id,
            &relay_auth::totp::code_at(&e.secret_base32, t).unwrap(),
        )
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(30));
    let code = relay_auth::totp::code_at(&e.secret_base32, t + 30).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (acc, id, code) = (f.accounts.clone(), u.id.clone(), code.clone());
        tasks.push(tokio::spawn(async move {
            acc.verify_second_factor(&id, &code).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn attempts_are_throttled_per_account_and_ip_with_lockout() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap());
    let throttle = Arc::new(MemoryThrottle::new(Arc::new(clock.clone())));
    let limits = AttemptLimits {
        login_per_account: Limit::new(3, StdDuration::from_secs(900)),
        login_per_ip: Limit::new(5, StdDuration::from_secs(900)),
        register_per_ip: Limit::new(2, StdDuration::from_secs(3600)),
        reset_per_account: Limit::new(2, StdDuration::from_secs(3600)),
        ..AttemptLimits::default()
    };
    let outbox = Arc::new(MemoryOutbox::new());
    let accounts = AccountService::new(
        Arc::new(MemoryStore::new()),
        outbox,
        Arc::new(clock.clone()),
    )
    .with_hasher(PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS, 2).unwrap())
    .with_throttle(throttle, limits);
    let ip = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    let other_ip = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8)));
    accounts
        .create_user("locked@example.com", PW, Role::User)
        .await
        .unwrap();
    let attempt = |pw: &'static str, ip| LoginRequest {
        email: "locked@example.com",
        password: pw,
        second_factor: None,
        ip,
    };
    for _ in 0..3 {
        assert!(matches!(
            accounts.login(attempt("wrong password", ip)).await,
            Err(AuthError::InvalidCredentials)
        ));
    }
    // Locked out: even the right password is refused, from any IP.
    assert!(matches!(
        accounts.login(attempt(PW, other_ip)).await,
        Err(AuthError::Throttled { .. })
    ));
    clock.advance(Duration::minutes(16));
    accounts.login(attempt(PW, other_ip)).await.unwrap();

    // Per IP: five logins for different accounts (the earlier ones aged out), then the IP
    // is locked out.
    for i in 0..5 {
        let email: &'static str = Box::leak(format!("ghost{i}@example.com").into_boxed_str());
        let _ = accounts
            .login(LoginRequest {
                email,
                password: PW,
                second_factor: None,
                ip,
            })
            .await;
    }
    let r = accounts
        .login(LoginRequest {
            email: "ghost9@example.com",
            password: PW,
            second_factor: None,
            ip,
        })
        .await;
    assert!(matches!(r, Err(AuthError::Throttled { .. })), "{r:?}");

    accounts.register("r1@example.com", PW, ip).await.unwrap();
    accounts.register("r2@example.com", PW, ip).await.unwrap();
    assert!(matches!(
        accounts.register("r3@example.com", PW, ip).await,
        Err(AuthError::Throttled { .. })
    ));
    accounts
        .request_password_reset("r1@example.com", other_ip)
        .await
        .unwrap();
    accounts
        .request_password_reset("r1@example.com", other_ip)
        .await
        .unwrap();
    assert!(matches!(
        accounts
            .request_password_reset("R1@example.com", other_ip)
            .await,
        Err(AuthError::Throttled { .. })
    ));
}
