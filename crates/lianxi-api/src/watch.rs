//! Watches: a server stream per watcher, fed from the log itself.
//!
//! Each watcher reads the log at its own pace from the last global sequence
//! it sent, and is woken when a group has been written. Nothing is buffered
//! per watcher beyond a small channel, so a slow watcher slows only itself
//! and never misses a change: resuming after the last `global_sequence`
//! received gives every later change.
//!
//! Each change carries the case's view after that change (not the view at
//! the time it is read), and a filter is judged on that view, so a watcher
//! resuming from a point receives exactly what a live watcher received from
//! the same point. Each batch of changes is recorded in the access log, with
//! the cases it shows, before it is sent.

use std::collections::HashMap;

use lianxi_log::{GroupReport, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseChange, CaseFilter, CaseView, LogEntry};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::gate::Call;
use crate::timeline_entry;

// Watch streams carry no personal values: they go to dashboards and stay
// open; `GetCase` and `GetTimeline` show them to the roles that need them.

/// Messages a watcher may have queued before the reader waits for it.
const WATCH_BUFFER: usize = 64;
/// Entries read from the log per step.
const CHUNK: usize = 512;

type Tx = mpsc::Sender<Result<CaseChange, Status>>;

/// Whether the watching principal may see the case now.
fn visible(call: &Call, view: &CaseView) -> bool {
    crate::auth::may_read_case(call.principal(), view)
}

/// Records a batch of changes (the cases they show), then sends them. False
/// if the watcher is gone or the batch could not be recorded (the watcher
/// then gets the error).
async fn send_batch(tx: &Tx, call: &Call, batch: Vec<CaseChange>) -> bool {
    let Some(last) = batch.last() else {
        return true;
    };
    let mut shown: Vec<String> = Vec::new();
    for c in &batch {
        if !shown.contains(&c.case_id) {
            shown.push(c.case_id.clone());
        }
    }
    let detail = format!(
        "{} change(s) up to global sequence {}",
        batch.len(),
        last.global_sequence
    );
    if let Err(s) = call.record(&detail, shown).await {
        send_err(tx, s).await;
        return false;
    }
    for c in batch {
        if tx.send(Ok(c)).await.is_err() {
            return false;
        }
    }
    true
}

/// The views after a batch of entries: the current view for a case's
/// latest entry, and one replay of the case for earlier ones, however many.
struct ViewsAfter {
    /// The current view of each case of the batch.
    current: HashMap<String, Option<CaseView>>,
    /// The view after each entry, by global sequence.
    after: HashMap<u64, CaseView>,
}

impl ViewsAfter {
    async fn read(log: &Log, entries: &[LogEntry]) -> Result<ViewsAfter, Status> {
        let mut current: HashMap<String, Option<CaseView>> = HashMap::new();
        for e in entries {
            let case_id = entry_case(e);
            if let std::collections::hash_map::Entry::Vacant(slot) = current.entry(case_id) {
                let v = case_view(log, slot.key()).await?;
                slot.insert(v);
            }
        }
        // Entries that are not their case's latest need a replay: one per
        // case, through the last of them.
        let mut replay: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
        let mut after = HashMap::new();
        for e in entries {
            let case_id = entry_case(e);
            match current.get(&case_id) {
                Some(Some(v)) if v.last_global_sequence == e.global_sequence => {
                    after.insert(e.global_sequence, v.clone());
                }
                Some(Some(_)) => {
                    let r = replay.entry(case_id).or_default();
                    r.0 = r.0.max(e.global_sequence);
                    r.1.push(e.global_sequence);
                }
                _ => {}
            }
        }
        for (case_id, (through, wanted)) in replay {
            let folded = crate::on_log(log, move |l| {
                let mut out = Vec::new();
                l.case_views_through(&case_id, through, |e, v| {
                    if wanted.contains(&e.global_sequence) {
                        out.push((e.global_sequence, v.clone()));
                    }
                })?;
                Ok(out)
            })
            .await?;
            after.extend(folded);
        }
        Ok(ViewsAfter { current, after })
    }

    fn current(&self, case_id: &str) -> Option<&CaseView> {
        self.current.get(case_id).and_then(Option::as_ref)
    }

    /// The case's view right after entry `e`.
    fn after(&self, e: &LogEntry) -> Option<CaseView> {
        self.after.get(&e.global_sequence).cloned()
    }
}

fn entry_case(e: &LogEntry) -> String {
    e.event
        .as_ref()
        .map(|ev| ev.case_id.clone())
        .unwrap_or_default()
}

pub(crate) fn spawn_case(
    log: Log,
    mut changes: watch::Receiver<Option<GroupReport>>,
    case_id: String,
    after: u64,
    call: Call,
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
                if let Some(e) = chunk.last() {
                    last_case_seq = e.case_sequence;
                }
                let chunk: Vec<LogEntry> = chunk
                    .into_iter()
                    .filter(|e| e.global_sequence > after)
                    .collect();
                let views = match ViewsAfter::read(&log, &chunk).await {
                    Ok(v) => v,
                    Err(s) => return send_err(&tx, s).await,
                };
                let mut batch = Vec::new();
                for e in &chunk {
                    last_global = e.global_sequence;
                    batch.push(change(e, views.after(e)));
                }
                if !send_batch(&tx, &call, batch).await {
                    return;
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
            if !visible(&call, &view) {
                let s = Status::permission_denied(format!(
                    "case {} is no longer within your sight",
                    crate::echo(&case_id)
                ));
                return send_err(&tx, call.refuse(s).await).await;
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
            // The call's own record (made before the stream opened, for
            // this case) covers the snapshot; changes are recorded per
            // batch.
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
            let views = match ViewsAfter::read(&log, &entries).await {
                Ok(v) => v,
                Err(s) => return send_err(&tx, s).await,
            };
            if views.current(&case_id).is_some_and(|v| !visible(&call, v)) {
                let s = Status::permission_denied(format!(
                    "case {} is no longer within your sight",
                    crate::echo(&case_id)
                ));
                return send_err(&tx, call.refuse(s).await).await;
            }
            let mut batch = Vec::with_capacity(entries.len());
            for e in &entries {
                last_case_seq = e.case_sequence;
                batch.push(change(e, views.after(e)));
            }
            if !send_batch(&tx, &call, batch).await {
                return;
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
    call: Call,
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
            let snapshots: Vec<CaseChange> = views
                .into_iter()
                .filter(|v| visible(&call, v) && lianxi_domain::matches(&filter, v, &at))
                .map(|view| CaseChange {
                    case_id: view.case_id.clone(),
                    global_sequence: last_global,
                    entry: None,
                    view: Some(crate::conceal_view(view)),
                    snapshot: true,
                })
                .collect();
            if !send_batch(&tx, &call, snapshots).await {
                return;
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
            let views = match ViewsAfter::read(&log, &entries).await {
                Ok(v) => v,
                Err(s) => return send_err(&tx, s).await,
            };
            let at = now();
            let mut batch = Vec::new();
            for e in &entries {
                last_global = e.global_sequence;
                // Sight and the filter are judged on the view after this
                // change, as a live watcher saw it.
                let Some(view) = views.after(e) else {
                    continue;
                };
                if !visible(&call, &view) || !lianxi_domain::matches(&filter, &view, &at) {
                    continue;
                }
                batch.push(change(e, Some(view)));
            }
            if !send_batch(&tx, &call, batch).await {
                return;
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
