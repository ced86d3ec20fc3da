//! Watches: a server stream per watcher, fed from the log itself.
//!
//! Each watcher reads the log at its own pace from the last global sequence
//! it sent, and is woken when a group has been written. Nothing is buffered
//! per watcher beyond a small channel, so a slow watcher slows only itself
//! and never misses a change: resuming after the last `global_sequence`
//! received gives every later change.

use std::collections::HashMap;

use lianxi_log::{GroupReport, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseChange, CaseFilter, CaseView, LogEntry};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::timeline_entry;

// Watch streams carry no personal values: they go to dashboards and stay
// open; `GetCase` and `GetTimeline` show them to the roles that need them.

/// Messages a watcher may have queued before the reader waits for it.
const WATCH_BUFFER: usize = 64;
/// Entries read from the log per step.
const CHUNK: usize = 512;

/// Who may see which case, decided per change (a case can come into or out
/// of a principal's sight as it evolves).
pub(crate) type Visible = Box<dyn Fn(&CaseView) -> bool + Send + Sync>;

pub(crate) fn spawn_case(
    log: Log,
    mut changes: watch::Receiver<Option<GroupReport>>,
    case_id: String,
    after: u64,
    visible: Visible,
) -> mpsc::Receiver<Result<CaseChange, Status>> {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        // Mark the current state seen before reading, so a group written
        // while we catch up wakes us again.
        changes.borrow_and_update();
        let mut last_case_seq = 0u64;
        let mut last_global = after;
        // Catch up: changes after `after`, then the current view.
        if after > 0 {
            loop {
                let chunk = match case_entries(&log, &case_id, last_case_seq).await {
                    Ok(c) => c,
                    Err(s) => return send_err(&tx, s).await,
                };
                let n = chunk.len();
                for e in chunk {
                    last_case_seq = e.case_sequence;
                    if e.global_sequence <= after {
                        continue;
                    }
                    last_global = e.global_sequence;
                    if tx.send(Ok(change(&e, None))).await.is_err() {
                        return;
                    }
                }
                if n < CHUNK {
                    break;
                }
            }
        }
        let view = match case_view(&log, &case_id).await {
            Ok(v) => v,
            Err(s) => return send_err(&tx, s).await,
        };
        if let Some(view) = view {
            if !visible(&view) {
                return send_err(&tx, Status::permission_denied(format!(
                    "you may not see case {case_id}: it is outside your agency's or jurisdiction's cases"
                )))
                .await;
            }
            if after == 0 {
                // Starting from the present: the snapshot covers everything
                // up to it.
                last_case_seq = view.case_sequence;
                last_global = view.last_global_sequence;
            }
            // Resuming: the snapshot may already include changes written
            // while catching up; they are still sent as changes below, and
            // the snapshot's sequence stays at the last change sent, so a
            // watcher that resumes from it misses nothing.
            let snapshot = CaseChange {
                case_id: case_id.clone(),
                global_sequence: last_global,
                entry: None,
                view: Some(crate::conceal_view(view)),
                snapshot: true,
            };
            if tx.send(Ok(snapshot)).await.is_err() {
                return;
            }
        }
        if after > 0 {
            // Pick up whatever was written during the catch-up at once.
            changes.mark_changed();
        }
        // Live.
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            let entries = match case_entries(&log, &case_id, last_case_seq).await {
                Ok(c) => c,
                Err(s) => return send_err(&tx, s).await,
            };
            if entries.is_empty() {
                continue;
            }
            let view = match case_view(&log, &case_id).await {
                Ok(v) => v,
                Err(s) => return send_err(&tx, s).await,
            };
            if let Some(v) = &view
                && !visible(v)
            {
                return send_err(
                    &tx,
                    Status::permission_denied(format!(
                        "case {case_id} is no longer within your sight"
                    )),
                )
                .await;
            }
            let last = entries.len() - 1;
            for (i, e) in entries.iter().enumerate() {
                last_case_seq = e.case_sequence;
                // The view after the last change read; earlier changes of
                // the same read carry the event only.
                let v = if i == last { view.clone() } else { None };
                if tx.send(Ok(change(e, v))).await.is_err() {
                    return;
                }
            }
            if entries.len() == CHUNK {
                // More to read: do not wait for the next group.
                changes.mark_changed();
            }
        }
    });
    rx
}

pub(crate) fn spawn_cases(
    log: Log,
    mut changes: watch::Receiver<Option<GroupReport>>,
    filter: CaseFilter,
    after: u64,
    now: impl Fn() -> Timestamp + Send + 'static,
    visible: Visible,
) -> mpsc::Receiver<Result<CaseChange, Status>> {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        changes.borrow_and_update();
        let mut last_global = after;
        if after == 0 {
            // Start from the present: the current view of every matching
            // case, then changes after the log position read first.
            last_global = log.checkpoint().global_sequence;
            let views = match crate::on_log(&log, |l| l.views()).await {
                Ok(v) => v,
                Err(s) => return send_err(&tx, s).await,
            };
            let at = now();
            for view in views {
                if !visible(&view) || !lianxi_domain::matches(&filter, &view, &at) {
                    continue;
                }
                let snapshot = CaseChange {
                    case_id: view.case_id.clone(),
                    global_sequence: last_global,
                    entry: None,
                    view: Some(crate::conceal_view(view)),
                    snapshot: true,
                };
                if tx.send(Ok(snapshot)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            let after = last_global;
            let entries = match crate::on_log(&log, move |l| l.entries(after, CHUNK)).await {
                Ok(e) => e,
                Err(s) => return send_err(&tx, s).await,
            };
            if entries.is_empty() {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
                continue;
            }
            let mut views: HashMap<String, Option<CaseView>> = HashMap::new();
            let at = now();
            for e in &entries {
                last_global = e.global_sequence;
                let case = e
                    .event
                    .as_ref()
                    .map(|ev| ev.case_id.clone())
                    .unwrap_or_default();
                if !views.contains_key(&case) {
                    let v = match case_view(&log, &case).await {
                        Ok(v) => v,
                        Err(s) => return send_err(&tx, s).await,
                    };
                    views.insert(case.clone(), v);
                }
                let Some(Some(view)) = views.get(&case) else {
                    continue;
                };
                if !visible(view) || !lianxi_domain::matches(&filter, view, &at) {
                    continue;
                }
                if tx.send(Ok(change(e, Some(view.clone())))).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn change(e: &LogEntry, view: Option<CaseView>) -> CaseChange {
    CaseChange {
        case_id: e
            .event
            .as_ref()
            .map(|ev| ev.case_id.clone())
            .unwrap_or_default(),
        global_sequence: e.global_sequence,
        entry: Some(timeline_entry(e)),
        view: view.map(crate::conceal_view),
        snapshot: false,
    }
}

async fn case_entries(log: &Log, case_id: &str, after: u64) -> Result<Vec<LogEntry>, Status> {
    let case_id = case_id.to_owned();
    crate::on_log(log, move |l| l.case_entries(&case_id, after, CHUNK)).await
}

async fn case_view(log: &Log, case_id: &str) -> Result<Option<CaseView>, Status> {
    let case_id = case_id.to_owned();
    crate::on_log(log, move |l| l.case_view(&case_id)).await
}

async fn send_err(tx: &mpsc::Sender<Result<CaseChange, Status>>, s: Status) {
    let _ = tx.send(Err(s)).await;
}
