//! `lianxi.v1.Intake`: what the node did with what agencies sent.

use lianxi_log::Log;
use lianxi_proto::v1::intake_server::{Intake, IntakeServer};
use lianxi_proto::v1::{Agency, ListRejectionsRequest, ListRejectionsResponse};
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::gate::{Call, Door, Gate, Service};
use crate::{on_log, page_size};

/// The `Intake` service.
#[derive(Clone)]
pub struct IntakeApi {
    log: Log,
    gate: Gate,
}

impl IntakeApi {
    pub fn new(log: Log, gate: Gate) -> Self {
        IntakeApi { log, gate }
    }

    /// The tonic server for this service, behind the door.
    pub fn into_server(self) -> Door<IntakeServer<IntakeApi>> {
        let gate = self.gate.clone();
        Door::new(IntakeServer::new(self), gate, Service::Intake)
    }
}

#[tonic::async_trait]
impl Intake for IntakeApi {
    #[tracing::instrument(skip_all, fields(agency = request.get_ref().agency))]
    async fn list_rejections(
        &self,
        request: Request<ListRejectionsRequest>,
    ) -> Result<Response<ListRejectionsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let asked = Agency::try_from(req.agency).map_err(|_| {
            Status::invalid_argument(format!("agency {} is not a known agency", req.agency))
        })?;
        // An agency sees only what arrived on its own subjects.
        let principal = call.principal();
        let agency = match &principal.role {
            Role::Agency(own) if asked != Agency::Unspecified && asked != *own => {
                let refusal = Status::permission_denied(format!(
                    "{} may list only its own rejections; leave --agency out or name your own",
                    principal.name
                ));
                return Err(call.refuse(refusal).await);
            }
            Role::Agency(own) => *own,
            _ => asked,
        };
        let size = page_size(req.page_size)?;
        let mut after = req.after_stream_sequence;
        // Filtering by agency may skip records; scan in bounded chunks until
        // a page is full or the records run out.
        let (rejections, more) = on_log(&self.log, move |log| {
            let mut out = Vec::new();
            loop {
                let chunk = log.rejections(after, 1000)?;
                let exhausted = chunk.len() < 1000;
                for r in chunk {
                    after = r.stream_sequence;
                    let receipt = lianxi_log::rejection_receipt(&r);
                    if agency == Agency::Unspecified || receipt.agency == agency as i32 {
                        if out.len() == size {
                            return Ok::<_, lianxi_log::Error>((out, true));
                        }
                        out.push(receipt);
                    }
                }
                if exhausted {
                    return Ok((out, false));
                }
            }
        })
        .await?;
        call.record(&format!("{} rejection(s)", rejections.len()), Vec::new())
            .await?;
        let next = if more {
            rejections.last().map_or(0, |r| r.stream_sequence)
        } else {
            0
        };
        Ok(Response::new(ListRejectionsResponse {
            rejections,
            next_after_stream_sequence: next,
        }))
    }
}
