//! [`Principal`]: who is calling, as the auth config or a JWT names them; and [`Caller`],
//! what every handler receives in the request's extensions: the principal's name (recorded
//! on what it does), the tenant its new tasks belong to, which tenants it may see, and the
//! kinds a worker may serve.

use std::sync::Arc;

use super::config::TenantQuotas;
use super::roles::Role;
use crate::error::Error;

/// The tenant of every task when auth is off, and of an admin's own tasks.
pub(crate) const DEFAULT_TENANT: &str = "default";

#[derive(Debug, PartialEq)]
pub(crate) struct Principal {
    pub name: Arc<str>,
    /// `None`: an admin of every tenant.
    pub tenant: Option<Arc<str>>,
    pub roles: Vec<Role>,
    /// The kinds a worker principal may serve; `None`: any.
    pub kinds: Option<Arc<[String]>>,
}

impl Principal {
    pub(crate) fn grants(&self, needed: Role) -> bool {
        self.roles.iter().any(|role| role.grants(needed))
    }

    pub(crate) fn caller(&self) -> Caller {
        Caller {
            name: Arc::clone(&self.name),
            tenant: self.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into()),
            all_tenants: self.roles.contains(&Role::Admin),
            kinds: self.kinds.clone(),
            quotas: None,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Caller {
    pub name: Arc<str>,
    /// The tenant of the tasks it starts and the workers it connects.
    pub tenant: Arc<str>,
    /// An admin: sees and acts on every tenant's tasks.
    pub all_tenants: bool,
    pub kinds: Option<Arc<[String]>>,
    /// The quotas of its tenant, if the auth config gives it any.
    pub quotas: Option<Arc<TenantQuotas>>,
}

impl Caller {
    /// The caller when auth is off: everyone is one admin-like principal of the tenant
    /// `default`, which is today's behaviour.
    pub(crate) fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            tenant: DEFAULT_TENANT.into(),
            all_tenants: false,
            kinds: None,
            quotas: None,
        }
    }

    /// Whether a worker of this caller may serve `kind`.
    pub(crate) fn check_kind(&self, kind: &str) -> Result<(), Error> {
        match &self.kinds {
            Some(kinds) if !kinds.iter().any(|k| k == kind) => Err(Error::KindNotAllowed {
                principal: self.name.to_string(),
                kind: kind.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// The server itself (shutdown cancels): every tenant, named by the replica's id.
    pub(crate) fn server(replica_id: &str) -> Caller {
        Caller {
            name: replica_id.into(),
            tenant: DEFAULT_TENANT.into(),
            all_tenants: true,
            kinds: None,
            quotas: None,
        }
    }

    /// Whether the caller may see a task of `tenant`.
    pub(crate) fn sees(&self, tenant: &str) -> bool {
        self.all_tenants || *self.tenant == *tenant
    }

    /// The tenant a listing is scoped to; `None`: every tenant (an admin).
    pub(crate) fn list_scope(&self) -> Option<String> {
        (!self.all_tenants).then(|| self.tenant.to_string())
    }

    /// The caller of a request, put there by the auth layer (every request that reaches a
    /// handler has one; none would be a wiring mistake, refused rather than let through).
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Error> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("no credentials".to_owned()))
    }
}
