//! Roles and what they may do (MSS-Login's defaults; shared/mss-login-api.md §6).

use serde::{Deserialize, Serialize};

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The one owner of the installation.
    Owner,
    /// Administrators: manage users, see everyone's jobs and files.
    Admin,
    /// Trusted users: may hold API tokens.
    Power,
    /// Ordinary users.
    User,
    /// Read-only visitors: may not run or upload.
    Guest,
}

/// A permission checked by a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Submit prompts.
    CanRun,
    /// Use the REST API at all.
    CanAccessApi,
    /// Upload files.
    CanUpload,
    /// Save, move and delete workflows.
    CanModifyWorkflows,
    /// Create API tokens.
    CanHaveApiTokens,
    /// See every user's queue, history and files.
    CanViewAll,
}

impl Permission {
    /// The name used in 403 bodies and `/mss-login/api/me`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CanRun => "can_run",
            Permission::CanAccessApi => "can_access_api",
            Permission::CanUpload => "can_upload",
            Permission::CanModifyWorkflows => "can_modify_workflows",
            Permission::CanHaveApiTokens => "can_have_api_tokens",
            Permission::CanViewAll => "can_view_all",
        }
    }

    /// Every permission, in a stable order.
    pub const ALL: [Permission; 6] = [
        Permission::CanRun,
        Permission::CanAccessApi,
        Permission::CanUpload,
        Permission::CanModifyWorkflows,
        Permission::CanHaveApiTokens,
        Permission::CanViewAll,
    ];
}

impl Role {
    /// Parses a role name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "power" => Some(Role::Power),
            "user" => Some(Role::User),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }

    /// The role name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Power => "power",
            Role::User => "user",
            Role::Guest => "guest",
        }
    }

    /// True for owner and admin.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// MSS-Login's default table, with guests unable to run (its built-in fallback).
    pub fn grants(self, p: Permission) -> bool {
        use Permission::*;
        match p {
            CanAccessApi => true,
            CanRun | CanUpload | CanModifyWorkflows => self != Role::Guest,
            CanHaveApiTokens => matches!(self, Role::Owner | Role::Admin | Role::Power),
            CanViewAll => self.is_admin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        assert!(Role::Owner.grants(Permission::CanViewAll));
        assert!(Role::Admin.grants(Permission::CanViewAll));
        assert!(!Role::Power.grants(Permission::CanViewAll));
        assert!(Role::Power.grants(Permission::CanHaveApiTokens));
        assert!(!Role::User.grants(Permission::CanHaveApiTokens));
        assert!(Role::User.grants(Permission::CanRun));
        assert!(!Role::Guest.grants(Permission::CanRun));
        assert!(!Role::Guest.grants(Permission::CanUpload));
        assert!(Role::Guest.grants(Permission::CanAccessApi));
        assert_eq!(Role::parse("ADMIN"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
