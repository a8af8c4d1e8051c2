//! LDAP as a login source next to local accounts.
//!
//! The classic search-then-bind flow: bind as a service account, find the user's entry by
//! a filter (the typed email is escaped into it), bind as that entry with the typed
//! password, then (as the service account again) find the groups the entry is a member of
//! and map them to a [`Role`]. A successful login creates or updates the local profile;
//! the password itself is never stored locally.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ldap3_rustls::{Certificate, ClientConfig, RootCertStore};

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};

use crate::email::Email;
use crate::error::AuthError;
use crate::password::Password;
use crate::role::Role;

/// LDAP result code for wrong credentials.
const INVALID_CREDENTIALS: u32 = 49;

/// How to reach and read the directory.
#[derive(Clone)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// Skip certificate verification (test directories only).
    pub no_tls_verify: bool,
    /// PEM CA certificate(s) to trust for `ldaps://` and StartTLS instead of the system
    /// roots, e.g. a company CA; `None` trusts the system roots.
    pub ca_pem: Option<String>,
    /// Service account DN used for searches.
    pub bind_dn: String,
    /// Service account password.
    pub bind_password: String,
    /// Where users are searched.
    pub user_base: String,
    /// User filter; `{email}` is replaced by the escaped login email, e.g.
    /// `(&(objectClass=inetOrgPerson)(mail={email}))`.
    pub user_filter: String,
    /// Attribute holding the user's email.
    pub email_attribute: String,
    /// Where groups are searched.
    pub group_base: String,
    /// Group filter; `{dn}` is replaced by the escaped user DN, e.g. `(member={dn})`.
    pub group_filter: String,
    /// Group DN to role; the most privileged match wins.
    pub group_roles: Vec<(String, Role)>,
    /// Role of users in no mapped group; `None` refuses them.
    pub default_role: Option<Role>,
    /// Timeout of connecting and of each operation.
    pub timeout: Duration,
}

impl std::fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("no_tls_verify", &self.no_tls_verify)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("bind_dn", &self.bind_dn)
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .field("group_base", &self.group_base)
            .field("group_filter", &self.group_filter)
            .field("group_roles", &self.group_roles)
            .finish_non_exhaustive()
    }
}

/// Who the directory says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryIdentity {
    /// The entry's DN.
    pub dn: String,
    /// The entry's email.
    pub email: Email,
    /// Role from group membership.
    pub role: Role,
}

/// An LDAP directory to log in against.
#[derive(Debug, Clone)]
pub struct LdapDirectory {
    config: LdapConfig,
    /// Built from `ca_pem`; `None` lets ldap3 use the system roots.
    tls: Option<Arc<ClientConfig>>,
}

/// The DER certificates in the `CERTIFICATE` blocks of `pem`.
fn pem_certificates(pem: &str) -> Result<Vec<Certificate>, AuthError> {
    let bad = |why: &str| AuthError::Ldap(format!("ca_pem: {why}"));
    let mut certs = Vec::new();
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != "-----BEGIN CERTIFICATE-----" {
            continue;
        }
        let mut b64 = String::new();
        loop {
            match lines.next() {
                Some("-----END CERTIFICATE-----") => break,
                Some(l) => b64.push_str(l),
                None => return Err(bad("unterminated CERTIFICATE block")),
            }
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("bad base64: {e}")))?;
        certs.push(Certificate(der));
    }
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block"));
    }
    Ok(certs)
}

/// A rustls client config trusting exactly the CAs in `pem`.
fn tls_config(pem: &str) -> Result<Arc<ClientConfig>, AuthError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates(pem)? {
        roots
            .add(&cert)
            .map_err(|e| AuthError::Ldap(format!("ca_pem: not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_safe_defaults()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[allow(clippy::needless_pass_by_value)] // shaped for map_err
fn dir_err(e: LdapError) -> AuthError {
    AuthError::Ldap(e.to_string())
}

fn is_invalid_credentials(e: &LdapError) -> bool {
    matches!(e, LdapError::LdapResult { result } if result.rc == INVALID_CREDENTIALS)
}

impl LdapDirectory {
    /// A directory with `config`. Checks the filters have their placeholders and that
    /// `ca_pem`, if given, holds CA certificates (and is not combined with
    /// `no_tls_verify`, which would silently ignore it).
    pub fn new(config: LdapConfig) -> Result<Self, AuthError> {
        if !config.user_filter.contains("{email}") {
            return Err(AuthError::Ldap("user_filter must contain {email}".into()));
        }
        if !config.group_filter.contains("{dn}") {
            return Err(AuthError::Ldap("group_filter must contain {dn}".into()));
        }
        let tls = match &config.ca_pem {
            Some(_) if config.no_tls_verify => {
                return Err(AuthError::Ldap(
                    "ca_pem and no_tls_verify contradict each other".into(),
                ))
            }
            Some(pem) => Some(tls_config(pem)?),
            None => None,
        };
        Ok(Self { config, tls })
    }

    async fn connect(&self) -> Result<Ldap, AuthError> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_starttls(self.config.starttls)
            .set_no_tls_verify(self.config.no_tls_verify);
        let settings = match &self.tls {
            Some(tls) => settings.set_config(tls.clone()),
            None => settings,
        };
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(dir_err)?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    async fn bind_service(&self, ldap: &mut Ldap) -> Result<(), AuthError> {
        ldap.with_timeout(self.config.timeout)
            .simple_bind(&self.config.bind_dn, &self.config.bind_password)
            .await
            .and_then(|r| r.success())
            .map_err(|e| AuthError::Ldap(format!("service bind failed: {e}")))?;
        Ok(())
    }

    /// Check `email` / `password` against the directory: `Some` identity when they are
    /// right, `None` when the user is unknown, ambiguous, in no permitted group, or the
    /// password is wrong; an error when the directory itself fails.
    pub async fn authenticate(
        &self,
        email: &Email,
        password: &Password,
    ) -> Result<Option<DirectoryIdentity>, AuthError> {
        let mut ldap = self.connect().await?;
        let result = self.authenticate_on(&mut ldap, email, password).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn authenticate_on(
        &self,
        ldap: &mut Ldap,
        email: &Email,
        password: &Password,
    ) -> Result<Option<DirectoryIdentity>, AuthError> {
        let t = self.config.timeout;
        self.bind_service(ldap).await?;
        let filter = self
            .config
            .user_filter
            .replace("{email}", &ldap_escape(email.as_str()));
        let (entries, _) = ldap
            .with_timeout(t)
            .search(
                &self.config.user_base,
                Scope::Subtree,
                &filter,
                vec![self.config.email_attribute.as_str()],
            )
            .await
            .and_then(|r| r.success())
            .map_err(dir_err)?;
        let [entry] = entries.as_slice() else {
            if entries.len() > 1 {
                tracing::warn!("LDAP user filter matched more than one entry; refusing login");
            }
            return Ok(None);
        };
        let entry = SearchEntry::construct(entry.clone());
        let Some(dir_email) = entry
            .attrs
            .get(&self.config.email_attribute)
            .and_then(|v| v.first())
            .and_then(|m| Email::parse(m).ok())
        else {
            return Ok(None);
        };
        // The password is never empty (Password guarantees it): an empty one would be an
        // unauthenticated bind, which many servers accept as success.
        match ldap
            .with_timeout(t)
            .simple_bind(&entry.dn, password.expose())
            .await
            .and_then(|r| r.success())
        {
            Ok(_) => {}
            Err(e) if is_invalid_credentials(&e) => return Ok(None),
            Err(e) => return Err(dir_err(e)),
        }
        self.bind_service(ldap).await?;
        let filter = self
            .config
            .group_filter
            .replace("{dn}", &ldap_escape(entry.dn.as_str()));
        let (groups, _) = ldap
            .with_timeout(t)
            .search(
                &self.config.group_base,
                Scope::Subtree,
                &filter,
                vec!["1.1"],
            )
            .await
            .and_then(|r| r.success())
            .map_err(dir_err)?;
        let member_of: Vec<String> = groups
            .into_iter()
            .map(|g| SearchEntry::construct(g).dn.to_ascii_lowercase())
            .collect();
        let role = self
            .config
            .group_roles
            .iter()
            .filter(|(dn, _)| member_of.contains(&dn.to_ascii_lowercase()))
            .map(|(_, role)| *role)
            .min() // Admin < Operator < User: the most privileged
            .or(self.config.default_role);
        Ok(role.map(|role| DirectoryIdentity {
            dn: entry.dn,
            email: dir_email,
            role,
        }))
    }
}
