//! The names of every Redis key and channel the store uses (see `DATA_MODEL.md`).

/// Key and channel names, all under one prefix so deployments can share a Redis.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn task(&self, id: impl std::fmt::Display) -> String {
        format!("{}task:{id}", self.prefix)
    }
    pub fn task_prefix(&self) -> String {
        format!("{}task:", self.prefix)
    }
    /// Request ids are unique per tenant. Tenant names hold no `:`, so the first one
    /// after `request:` ends the tenant.
    pub fn request(&self, tenant: &str, request_id: &str) -> String {
        format!("{}request:{tenant}:{request_id}", self.prefix)
    }
    pub fn active(&self) -> String {
        format!("{}active", self.prefix)
    }
    pub fn active_of_kind(&self, kind: &str) -> String {
        format!("{}active-kind:{kind}", self.prefix)
    }
    pub fn active_of_tenant(&self, tenant: &str) -> String {
        format!("{}active-tenant:{tenant}", self.prefix)
    }
    pub fn pending_of_tenant(&self, tenant: &str) -> String {
        format!("{}pending-tenant:{tenant}", self.prefix)
    }
    pub fn pending_tenants(&self) -> String {
        format!("{}pending-tenants", self.prefix)
    }
    pub fn held(&self, what: &str, tenant: &str) -> String {
        format!("{}held-{what}:{tenant}", self.prefix)
    }
    pub fn start_bucket(&self, tenant: &str) -> String {
        format!("{}start-bucket:{tenant}", self.prefix)
    }
    pub fn active_of_session(&self, session: &str) -> String {
        format!("{}active-session:{session}", self.prefix)
    }
    /// Sessions are per tenant, like request ids (tenant names hold no `:`).
    pub fn cancelled_session(&self, tenant: &str, session: &str) -> String {
        format!("{}cancelled-session:{tenant}:{session}", self.prefix)
    }
    pub fn pending(&self) -> String {
        format!("{}pending", self.prefix)
    }
    pub fn children(&self, parent: impl std::fmt::Display) -> String {
        format!("{}children:{parent}", self.prefix)
    }
    pub fn history(&self, id: impl std::fmt::Display) -> String {
        format!("{}history:{id}", self.prefix)
    }
    pub fn checkpoints(&self, id: impl std::fmt::Display) -> String {
        format!("{}checkpoints:{id}", self.prefix)
    }
    pub fn owned(&self, owner: &str) -> String {
        format!("{}owned:{owner}", self.prefix)
    }
    pub fn owners(&self) -> String {
        format!("{}owners", self.prefix)
    }
    /// A sorted set, not the set `{p}worker-kinds` of earlier versions: a new name, so an
    /// upgraded replica never meets a key of the old type.
    pub fn learned_kinds(&self) -> String {
        format!("{}learned-kinds", self.prefix)
    }
    pub fn lease(&self, replica: &str) -> String {
        format!("{}lease:{replica}", self.prefix)
    }
    pub fn task_channel(&self, id: impl std::fmt::Display) -> String {
        format!("{}events:task:{id}", self.prefix)
    }
    pub fn owner_channel(&self, owner: &str) -> String {
        format!("{}events:owner:{owner}", self.prefix)
    }
    pub fn queue_channel(&self) -> String {
        format!("{}events:queue", self.prefix)
    }
}
