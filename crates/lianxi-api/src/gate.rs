//! The one door every call goes through: who is calling, may they call this,
//! and a record in the access log before any case data leaves the node.

use std::sync::Arc;

use lianxi_log::AccessLog;
use lianxi_proto::v1::{AccessRecord, CaseView, PrincipalRole};
use tonic::Status;
use tonic::metadata::MetadataMap;

pub(crate) use crate::auth::Service;
use crate::auth::{Principal, Principals, may_call, may_read_case, purpose};
use crate::wall_clock;

/// Authentication, authorisation and the access log, shared by the services.
#[derive(Clone)]
pub struct Gate {
    principals: Arc<Principals>,
    access: AccessLog,
}

impl Gate {
    pub fn new(principals: Principals, access: AccessLog) -> Gate {
        Gate {
            principals: Arc::new(principals),
            access,
        }
    }

    pub fn access_log(&self) -> AccessLog {
        self.access.clone()
    }

    /// Authenticates the caller and checks the role may use `service`. A
    /// refusal is recorded before it is returned.
    pub async fn admit(
        &self,
        metadata: &MetadataMap,
        method: &str,
        service: Service,
    ) -> Result<Principal, Status> {
        let principal = match self.principals.authenticate(metadata) {
            Ok(p) => p,
            Err(s) => {
                self.append(AccessRecord {
                    principal: "(unauthenticated)".into(),
                    role: PrincipalRole::Unspecified as i32,
                    method: method.into(),
                    purpose: purpose(metadata),
                    allowed: false,
                    detail: s.message().into(),
                    ..AccessRecord::default()
                })
                .await?;
                return Err(s);
            }
        };
        if let Err(s) = may_call(&principal, service) {
            return Err(self.deny(&principal, metadata, method, "", s).await);
        }
        Ok(principal)
    }

    /// Checks need to know for one case; a refusal is recorded.
    pub async fn check_case(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        method: &str,
        view: &CaseView,
    ) -> Result<(), Status> {
        if may_read_case(principal, view) {
            return Ok(());
        }
        let s = Status::permission_denied(format!(
            "{} may not see case {}: it is not among the cases your agency is involved in or your jurisdiction holds; ask the lead agency to refer it if you need it",
            principal.name, view.case_id
        ));
        Err(self
            .deny(principal, metadata, method, &view.case_id, s)
            .await)
    }

    /// Records an allowed read; the data may be sent once this returns.
    pub async fn record(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        method: &str,
        case_id: &str,
        detail: String,
    ) -> Result<(), Status> {
        self.append(AccessRecord {
            principal: principal.name.clone(),
            role: principal.proto_role() as i32,
            scope: principal.scope(),
            method: method.into(),
            case_id: case_id.into(),
            purpose: purpose(metadata),
            allowed: true,
            detail,
            ..AccessRecord::default()
        })
        .await
    }

    /// Records a refusal and gives back the status to return.
    pub async fn deny(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        method: &str,
        case_id: &str,
        refusal: Status,
    ) -> Status {
        let recorded = self
            .append(AccessRecord {
                principal: principal.name.clone(),
                role: principal.proto_role() as i32,
                scope: principal.scope(),
                method: method.into(),
                case_id: case_id.into(),
                purpose: purpose(metadata),
                allowed: false,
                detail: refusal.message().into(),
                ..AccessRecord::default()
            })
            .await;
        match recorded {
            Ok(()) => refusal,
            Err(s) => s,
        }
    }

    async fn append(&self, mut record: AccessRecord) -> Result<(), Status> {
        record.at = Some(wall_clock());
        let access = self.access.clone();
        crate::blocking(move || access.append(record).map(|_| ()), |e| {
                tracing::error!(error = %e, "cannot write the access log; refusing to serve");
                Status::unavailable(
                    "the node cannot record this access, so it serves nothing; the operator should check the node's disk",
                )
            })
            .await
    }
}
