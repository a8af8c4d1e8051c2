//! Roles and the one permission check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// What a user is, from most to least privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including managing other admins.
    Admin,
    /// Runs the service: manages users, keys and upstreams, but not roles.
    Operator,
    /// A customer: manages their own account and keys.
    User,
}

/// Something a role may or may not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Manage one's own profile, sessions, TOTP and keys.
    ManageOwnAccount,
    /// See and change other users' status, keys and policies.
    ManageUsers,
    /// Configure upstream accounts, plans and prices.
    ManageService,
    /// Change users' roles.
    ManageRoles,
}

impl Role {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::User => "user",
        }
    }

    /// May this role do `permission`?
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::ManageOwnAccount => true,
            Permission::ManageUsers | Permission::ManageService => {
                matches!(self, Role::Admin | Role::Operator)
            }
            Permission::ManageRoles => self == Role::Admin,
        }
    }

    /// The one permission check: `Ok` or [`AuthError::Forbidden`].
    pub fn require(self, permission: Permission) -> Result<(), AuthError> {
        if self.allows(permission) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission))
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "user" => Ok(Role::User),
            other => Err(format!(
                "unknown role `{}`: expected admin, operator or user",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_matrix() {
        use Permission::*;
        for (role, own, users, service, roles) in [
            (Role::Admin, true, true, true, true),
            (Role::Operator, true, true, true, false),
            (Role::User, true, false, false, false),
        ] {
            assert_eq!(role.allows(ManageOwnAccount), own);
            assert_eq!(role.allows(ManageUsers), users);
            assert_eq!(role.allows(ManageService), service);
            assert_eq!(role.allows(ManageRoles), roles);
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!(matches!(
            Role::User.require(Permission::ManageUsers),
            Err(AuthError::Forbidden(Permission::ManageUsers))
        ));
        assert!("root".parse::<Role>().is_err());
    }
}
