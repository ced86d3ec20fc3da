"""An agency's own system talking to lianxi with no lianxi code: nats-py for
events and receipts, grpcio over stubs generated from proto/ for the API,
grpcio-reflection's client to discover the services.

It acts as the police and checks what README.md and proto/lianxi/v1/*.proto
promise an outside client; it exits 1 with a clear message at the first
answer that differs, 0 when every check holds.

    python client.py --nats nats://127.0.0.1:4222 --grpc 127.0.0.1:50051 \
        --stubs DIR

`run` beside this file sets everything up (venv, stubs, nats-server, node).
"""

import argparse
import asyncio
import re
import sys
import time

import grpc

POLICE_TOKEN = "dev-only-police-token"  # deploy/principals.example.toml
XIHU_TOKEN = "dev-only-xihu-token"
AUDIT_TOKEN = "dev-only-audit-token"
PURPOSE = "outside-client check"
CASE = "OC-2026-0001"
EVENTS = "lianxi.v1.events"
RECEIPTS = "lianxi.v1.receipts"
LOOKUP = "lianxi.v1.lookup"
# 2026-11-20T01:00:00Z
T0 = 1_795_654_800

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class Mismatch(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Mismatch(what)


def printable(s, what):
    check(not CONTROL.search(s), f"{what} holds control or format characters: {s!r}")


def split_batch(pb, data, agency, what):
    """The receipts in one message on a receipts subject: every message there
    is a lianxi.v1.ReceiptBatch, one agency's receipts from one group the node
    wrote, in stream order (receipts.proto)."""
    batch = pb.ReceiptBatch()
    batch.ParseFromString(data)
    seqs = [r.stream_sequence for r in batch.receipts]
    check(seqs, f"{what}: an empty batch")
    check(seqs == sorted(set(seqs)), f"{what}: a batch not in stream order: {seqs}")
    for r in batch.receipts:
        check(r.agency == agency, f"{what}: a batch for agency {agency} holds a receipt for {r.agency}")
    return list(batch.receipts)


def check_message_id(msg, receipts, token, what):
    """receipts.proto: the message id names the batch's content."""
    want = f"receipts-{token}-{receipts[0].stream_sequence}-{receipts[-1].stream_sequence}"
    got = (msg.headers or {}).get("Nats-Msg-Id")
    check(got == want, f"{what}: message id {got!r}, expected {want!r}")


class Receipts:
    """The live receipts of one agency, by the stream sequence of the event.
    A receipt may come twice (a node re-sends what the bus had not
    acknowledged after a restart, in batches cut otherwise): the copy must
    say the same, and is dropped."""

    def __init__(self, pb, sub, agency):
        self.pb = pb
        self.sub = sub
        self.agency = agency
        self.by_seq = {}
        self.count = 0
        self.batches = 0

    async def get(self, seq, timeout=15.0):
        deadline = time.monotonic() + timeout
        while seq not in self.by_seq:
            left = deadline - time.monotonic()
            check(left > 0, f"no receipt for stream sequence {seq} within {timeout} s")
            try:
                msg = await self.sub.next_msg(timeout=left)
            except Exception:  # nats.errors.TimeoutError
                continue
            self.batches += 1
            for r in split_batch(self.pb, msg.data, self.agency, "live receipts"):
                if r.stream_sequence in self.by_seq:
                    check(self.by_seq[r.stream_sequence] == r,
                          f"two different receipts for stream sequence {r.stream_sequence}")
                    continue
                self.by_seq[r.stream_sequence] = r
                self.count += 1
        return self.by_seq[seq]


async def main(args):
    import nats
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.timestamp_pb2 import Timestamp
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    sys.path.insert(0, args.stubs)
    from lianxi.v1 import audit_pb2, audit_pb2_grpc, cases_pb2, cases_pb2_grpc
    from lianxi.v1 import events_pb2 as ev
    from lianxi.v1 import receipts_pb2 as rc
    from lianxi.v1 import receipts_pb2_grpc, view_pb2

    ts = lambda minutes: Timestamp(seconds=T0 + minutes * 60)  # noqa: E731
    S = rc.ReceiptStatus
    C = view_pb2.RejectionCode
    stats = {"published": 0, "accepted": 0, "duplicate": 0, "rejected": 0}

    nc = await nats.connect(args.nats, max_reconnect_attempts=5)
    js = nc.jetstream()
    # The node creates the streams and each agency's receipts consumer when
    # it starts; wait for them rather than publish into nothing.
    deadline = time.monotonic() + 30
    while True:
        try:
            await js.stream_info("LIANXI_EVENTS")
            await js.consumer_info("LIANXI_RECEIPTS", "police")
            break
        except Exception as e:
            check(time.monotonic() < deadline, f"the node did not create its streams within 30 s: {e}")
            await asyncio.sleep(0.2)
    live = Receipts(rc, await nc.subscribe(f"{RECEIPTS}.police"), ev.AGENCY_POLICE)

    msg_ids = {}

    async def publish(subject, payload, msg_id):
        ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=10)
        check(ack.stream == "LIANXI_EVENTS", f"published into stream {ack.stream!r}, not LIANXI_EVENTS")
        stats["published"] += 1
        return ack

    async def send(event, msg_id=None, subject=None, want=S.RECEIPT_STATUS_ACCEPTED, code=None):
        """Publishes one event (a new message id per publish, as the node's
        own client does) and returns its receipt, checked against `want`."""
        subject = subject or f"{EVENTS}.police.{event.case_id}"
        n = msg_ids.get(event.event_id, 0) + 1
        msg_ids[event.event_id] = n
        msg_id = msg_id or f"{event.event_id}~outside-{n}"
        ack = await publish(subject, event.SerializeToString(), msg_id)
        check(not ack.duplicate, f"the bus took {event.event_id} ({msg_id}) for a duplicate")
        r = await live.get(ack.seq)
        check(r.status == want,
              f"{event.event_id}: receipt {S.Name(r.status)} ({C.Name(r.code)}: {r.reason}), expected {S.Name(want)}")
        check(r.agency == ev.AGENCY_POLICE, f"{event.event_id}: receipt for agency {r.agency}")
        check(r.durability.node_flushed, f"{event.event_id}: receipt does not say the node flushed")
        check(r.durability.stream_sync == "always",
              f"{event.event_id}: receipt stream_sync {r.durability.stream_sync!r}, the node runs with --bus-sync always")
        check(r.durability.stream_replicas == 1, f"{event.event_id}: stream_replicas {r.durability.stream_replicas}")
        check(r.recorded_at.seconds > 0, f"{event.event_id}: no recorded_at")
        if want == S.RECEIPT_STATUS_ACCEPTED:
            stats["accepted"] += 1
            check(r.event_id == event.event_id and r.case_id == event.case_id,
                  f"accepted receipt names {r.event_id}/{r.case_id}")
            check(r.global_sequence > 0 and r.case_sequence > 0, f"{event.event_id}: no sequences")
            check(re.fullmatch(r"[0-9a-f]{64}", r.entry_hash), f"{event.event_id}: entry_hash {r.entry_hash!r}")
        elif want == S.RECEIPT_STATUS_REJECTED:
            stats["rejected"] += 1
            check(code is None or r.code == code,
                  f"{event.event_id}: rejected as {C.Name(r.code)} ({r.reason}), expected {C.Name(code) if code is not None else 'a rejection'}")
            check(r.reason.strip() != "", f"{event.event_id}: a rejection without a reason")
            check(len(r.reason) <= 2000, f"{event.event_id}: a {len(r.reason)}-character reason")
            printable(r.reason, "rejection reason")
            printable(r.event_id, "rejection event_id")
            printable(r.case_id, "rejection case_id")
            printable(r.subject, "rejection subject")
            check(r.global_sequence == 0 and r.entry_hash == "", "a rejection with a log position")
        else:
            stats["duplicate"] += 1
        return r

    def event(event_id, minutes, case=CASE, **body):
        return ev.Event(event_id=event_id, case_id=case, agency=ev.AGENCY_POLICE,
                        occurred_at=ts(minutes), **body)

    # ---------------------------------------------------------- publish
    opening = event("oc-1", 0, case_opened=ev.CaseOpened(
        channel=ev.CHANNEL_ALARM_110, category=ev.CATEGORY_DOMESTIC_VIOLENCE,
        jurisdiction="330100/330106/330106004", level=ev.LEVEL_TOWNSHIP,
        person_ref="PS-P-4711", summary="Neighbour called 110: shouting and blows next door.",
        person=ev.Person(name="Li Hua", id_number="330106199001011234", phone="13800000000",
                         address="12 Example Lane, Xihu")))
    r1 = await send(opening)
    check(r1.case_sequence == 1, f"the opening has case sequence {r1.case_sequence}")
    accepted = [r1]
    r2 = await send(event("oc-2", 30, risk_assessed=ev.RiskAssessed(
        level=ev.RISK_LEVEL_MEDIUM, score=55, factors=["threats"])))
    check(r2.case_sequence == 2 and r2.global_sequence > r1.global_sequence, "the follow-up's sequences")
    accepted.append(r2)

    # The same event again (a new publish, so a new message id): a duplicate
    # pointing at the original, nothing changed.
    d = await send(opening, want=S.RECEIPT_STATUS_DUPLICATE)
    check(d.original_global_sequence == r1.global_sequence,
          f"duplicate points at {d.original_global_sequence}, the original is {r1.global_sequence}")
    check(d.case_id == CASE and d.event_id == "oc-1", "the duplicate's receipt names its own original")

    # Re-send after a rejection: a bad score is INVALID_FIELD ...
    bad = event("oc-3", 60, risk_assessed=ev.RiskAssessed(level=ev.RISK_LEVEL_HIGH, score=150))
    rej = await send(bad, want=S.RECEIPT_STATUS_REJECTED, code=C.REJECTION_CODE_INVALID_FIELD)
    check("risk_assessed.score" in rej.reason, f"the reason does not name the field: {rej.reason}")
    rejections = [rej]
    fixed = event("oc-3", 60, risk_assessed=ev.RiskAssessed(level=ev.RISK_LEVEL_HIGH, score=90))
    # ... re-sent under the same Nats-Msg-Id, the bus swallows it (its
    # 120 s duplicate window): no receipt, and a lookup still says rejected.
    ack = await publish(f"{EVENTS}.police.{CASE}", fixed.SerializeToString(), "oc-3~outside-1")
    check(ack.duplicate and ack.seq == rej.stream_sequence,
          "a re-send under the rejected publish's message id was not taken for a bus duplicate")
    reply = rc.LookupReply()
    reply.ParseFromString((await nc.request(
        f"{LOOKUP}.police", rc.LookupRequest(event_id="oc-3").SerializeToString(), timeout=5)).data)
    check(reply.found and reply.receipt.status == S.RECEIPT_STATUS_REJECTED,
          f"lookup of oc-3 after the swallowed re-send: found={reply.found} {S.Name(reply.receipt.status)}")
    # ... under a new message id it is stored (a rejected id may be used again).
    r3 = await send(fixed)
    check(r3.case_sequence == 3, f"the fixed event has case sequence {r3.case_sequence}")
    accepted.append(r3)

    # PREDECESSOR_MISSING: the disposal of an alarm not received yet; again
    # once the alarm is stored.
    disposal = event("oc-5", 120, alarm_disposed=ev.AlarmDisposed(alarm_id="A-1", disposition="mediated"))
    rejections.append(await send(disposal, want=S.RECEIPT_STATUS_REJECTED,
                                 code=C.REJECTION_CODE_PREDECESSOR_MISSING))
    accepted.append(await send(event("oc-4", 90, alarm_received=ev.AlarmReceived(
        alarm_id="A-1", area=ev.AREA_URBAN, summary="second call"))))
    accepted.append(await send(disposal))

    # Hostile case ids: in the event, in the subject, far too long, and bytes
    # that are not an event. Each gets a readable rejection, sent to the police.
    hostile = "OC-2026-0001\n\x1b[31mFORGED\u202egnp.exe"
    h1 = await send(event("oc-h1", 130, case=hostile, progress_reported=ev.ProgressReported(summary="x")),
                    subject=f"{EVENTS}.police.{CASE}", want=S.RECEIPT_STATUS_REJECTED)
    check(h1.code in (C.REJECTION_CODE_INVALID_FIELD, C.REJECTION_CODE_CASE_MISMATCH),
          f"a control-character case id rejected as {C.Name(h1.code)}")
    rejections.append(h1)
    h2 = await send(event("oc-h2", 131, case="A", progress_reported=ev.ProgressReported(summary="x")),
                    subject=f"{EVENTS}.police.A.B", want=S.RECEIPT_STATUS_REJECTED,
                    code=C.REJECTION_CODE_BAD_SUBJECT)
    rejections.append(h2)
    long_case = "X" * 300
    h3 = await send(event("oc-h3", 132, case=long_case, progress_reported=ev.ProgressReported(summary="x")),
                    want=S.RECEIPT_STATUS_REJECTED, code=C.REJECTION_CODE_BAD_SUBJECT)
    check(len(h3.subject) <= 203, f"a {len(h3.subject)}-character subject echoed")
    check(len(h3.case_id) <= 67, f"a {len(h3.case_id)}-character case id echoed")
    rejections.append(h3)
    ack = await publish(f"{EVENTS}.police.{CASE}", b"\xff\xff\xff not protobuf", "oc-garbage~1")
    h4 = await live.get(ack.seq)
    check(h4.status == S.RECEIPT_STATUS_REJECTED and h4.code == C.REJECTION_CODE_MALFORMED,
          f"garbage bytes: {S.Name(h4.status)} {C.Name(h4.code)}")
    check(h4.event_id == "" and h4.agency == ev.AGENCY_POLICE, "garbage bytes: receipt fields")
    printable(h4.reason, "MALFORMED reason")
    stats["rejected"] += 1
    rejections.append(h4)

    # Several events published together: the node writes them as one group
    # (or a few) and sends the police one batch per group, in stream order.
    burst = [event(f"oc-b{i}", 150 + i, progress_reported=ev.ProgressReported(summary=f"call {i}"))
             for i in range(5)]
    acks = await asyncio.gather(*[
        js.publish(f"{EVENTS}.police.{CASE}", e.SerializeToString(),
                   headers={"Nats-Msg-Id": f"{e.event_id}~outside-1"}, timeout=10)
        for e in burst])
    stats["published"] += len(burst)
    batches_before = live.batches
    for e, ack in sorted(zip(burst, acks), key=lambda p: p[1].seq):
        r = await live.get(ack.seq)
        check(r.status == S.RECEIPT_STATUS_ACCEPTED and r.event_id == e.event_id,
              f"{e.event_id}: {S.Name(r.status)} {r.event_id}")
        accepted.append(r)
        stats["accepted"] += 1
    burst_batches = live.batches - batches_before
    check(1 <= burst_batches <= len(burst), f"{burst_batches} batches for {len(burst)} receipts")

    # A receipt missed: stop listening, publish, read it from the police's
    # durable consumer on LIANXI_RECEIPTS (named "police", README).
    await live.sub.unsubscribe()
    missed_event = event("oc-6", 180, progress_reported=ev.ProgressReported(summary="visited the household"))
    missed_ack = await publish(f"{EVENTS}.police.{CASE}", missed_event.SerializeToString(), "oc-6~outside-1")
    psub = await js.pull_subscribe_bind(durable="police", stream="LIANXI_RECEIPTS")
    durable = {}
    deadline = time.monotonic() + 15
    while missed_ack.seq not in durable:
        check(time.monotonic() < deadline, "the missed receipt never reached the durable consumer")
        try:
            msgs = await psub.fetch(batch=100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            batch = split_batch(rc, m.data, ev.AGENCY_POLICE, "the police consumer")
            check_message_id(m, batch, "police", "the police consumer")
            for r in batch:
                check(r.stream_sequence not in durable or durable[r.stream_sequence] == r,
                      f"two different receipts for stream sequence {r.stream_sequence} on the consumer")
                durable[r.stream_sequence] = r
            await m.ack()
    for seq, r in live.by_seq.items():
        check(seq in durable and durable[seq] == r,
              f"the durable consumer lacks (or differs in) the receipt of stream sequence {seq}")
    r6 = durable[missed_ack.seq]
    check(r6.status == S.RECEIPT_STATUS_ACCEPTED and r6.event_id == "oc-6", f"missed receipt: {r6}")
    accepted.append(r6)
    stats["accepted"] += 1
    try:
        again = await psub.fetch(batch=10, timeout=1)
    except nats.errors.TimeoutError:
        again = []
    check(not again, f"{len(again)} receipts came back after every one was acknowledged")
    reply = rc.LookupReply()
    reply.ParseFromString((await nc.request(
        f"{LOOKUP}.police", rc.LookupRequest(event_id="oc-6").SerializeToString(), timeout=5)).data)
    check(reply.found and reply.receipt.entry_hash == r6.entry_hash, "the lookup of oc-6 differs from its receipt")
    await nc.close()

    # ------------------------------------------------------------- gRPC
    channel = grpc.insecure_channel(args.grpc)
    cases = cases_pb2_grpc.CasesStub(channel)
    md = lambda token: [("authorization", f"Bearer {token}"), ("lianxi-purpose", PURPOSE)]  # noqa: E731

    got = cases.GetCase(cases_pb2.GetCaseRequest(case_id=CASE, now=ts(240)), metadata=md(POLICE_TOKEN))
    v = got.view
    check(v.case_id == CASE, f"GetCase answered for {v.case_id!r}")
    check(v.case_sequence == len(accepted), f"view case_sequence {v.case_sequence}, {len(accepted)} accepted")
    check(v.last_global_sequence == max(r.global_sequence for r in accepted), "view last_global_sequence")
    check(v.first_contact == ev.AGENCY_POLICE and v.lead == ev.AGENCY_POLICE, "first contact and lead")
    check(v.category == ev.CATEGORY_DOMESTIC_VIOLENCE and v.jurisdiction == "330100/330106/330106004",
          "category and jurisdiction")
    check(v.flags.risk_level == ev.RISK_LEVEL_HIGH and v.flags.risk_score == 90 and v.flags.high_risk,
          f"risk from the re-sent event: {v.flags.risk_level} {v.flags.risk_score}")
    check(v.person_ref == "PS-P-4711", f"police read identities: person_ref {v.person_ref!r}")
    check(got.applied_stream_sequence >= missed_ack.seq, "applied_stream_sequence behind the last event")
    check(got.evaluated_at == ts(240), "evaluated_at is not the `now` asked for")

    entries, after = [], 0
    while True:
        page = cases.GetTimeline(cases_pb2.GetTimelineRequest(case_id=CASE, after_case_sequence=after,
                                                              page_size=2), metadata=md(POLICE_TOKEN))
        check(len(page.entries) <= 2, f"a page of {len(page.entries)} entries for page_size 2")
        entries.extend(page.entries)
        if page.next_after_case_sequence == 0:
            break
        check(page.next_after_case_sequence > after, "GetTimeline's page token does not advance")
        after = page.next_after_case_sequence
    check([e.event_id for e in entries] == [r.event_id for r in accepted],
          f"timeline {[e.event_id for e in entries]}, receipts {[r.event_id for r in accepted]}")
    for e, r in zip(entries, accepted):
        check(e.hash == r.entry_hash and e.global_sequence == r.global_sequence
              and e.case_sequence == r.case_sequence,
              f"timeline entry {e.event_id} differs from its receipt")
        check(e.event.event_id == e.event_id and e.line.strip() != "", f"timeline entry {e.event_id}: event, line")
    check(entries[0].kind == "case_opened" and entries[1].kind == "risk_assessed",
          f"kinds {entries[0].kind}, {entries[1].kind}")
    person = entries[0].event.case_opened.person
    check(person.name == "Li Hua" and person.address == "12 Example Lane, Xihu",
          "police read identity and whereabouts in the timeline")

    # Need to know: the district secretariat reads identities, not whereabouts.
    sec = cases.GetTimeline(cases_pb2.GetTimelineRequest(case_id=CASE, page_size=1), metadata=md(XIHU_TOKEN))
    sp = sec.entries[0].event.case_opened.person
    check(sp.name == "Li Hua", "the secretariat reads identities")
    check(sp.address == "" and "case_opened.person.address" in [w.path for w in sec.entries[0].withheld],
          f"the secretariat was shown the address {sp.address!r} or not told it is withheld")

    def status_of(call):
        try:
            call()
        except grpc.RpcError as e:
            printable(e.details() or "", f"{e.code()} message")
            check(len(e.details() or "") < 1024, f"a {len(e.details())}-character status message")
            return e.code()
        return grpc.StatusCode.OK

    code = status_of(lambda: cases.GetCase(cases_pb2.GetCaseRequest(case_id=CASE), metadata=md("wrong-token")))
    check(code == grpc.StatusCode.UNAUTHENTICATED, f"a wrong token got {code}")
    code = status_of(lambda: cases.GetCase(cases_pb2.GetCaseRequest(case_id=CASE)))
    check(code == grpc.StatusCode.UNAUTHENTICATED, f"no token got {code}")
    code = status_of(lambda: cases.GetCase(cases_pb2.GetCaseRequest(case_id="OC-2026-9999"), metadata=md(POLICE_TOKEN)))
    check(code == grpc.StatusCode.NOT_FOUND, f"a missing case got {code}")
    code = status_of(lambda: cases.GetCase(cases_pb2.GetCaseRequest(case_id=hostile * 20), metadata=md(POLICE_TOKEN)))
    check(code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), f"a hostile case id got {code}")

    # The police's own rejections, through Intake.
    intake = receipts_pb2_grpc.IntakeStub(channel)
    listed = intake.ListRejections(rc.ListRejectionsRequest(agency=ev.AGENCY_POLICE), metadata=md(POLICE_TOKEN))
    by_seq = {r.stream_sequence: r for r in listed.rejections}
    for r in rejections:
        check(r.stream_sequence in by_seq and by_seq[r.stream_sequence].reason == r.reason,
              f"ListRejections lacks the rejection of stream sequence {r.stream_sequence}")

    # Every read is in the access log, with the purpose stated.
    audit = audit_pb2_grpc.AuditStub(channel)
    access = audit.ListAccess(audit_pb2.ListAccessRequest(case_id=CASE), metadata=md(AUDIT_TOKEN))
    reads = [a for a in access.records if a.principal == "police-records" and a.allowed
             and a.method == "/lianxi.v1.Cases/GetCase" and a.purpose == PURPOSE]
    check(reads, "the police's GetCase is not in the access log with its purpose")
    missing = audit.ListAccess(audit_pb2.ListAccessRequest(case_id="OC-2026-9999"), metadata=md(AUDIT_TOKEN))
    check([a for a in missing.records if not a.allowed and a.principal == "police-records"],
          "the police's refused GetCase of a missing case is not in the access log")
    # A call without a valid token is refused before its request is read:
    # recorded, without a case id.
    everything = audit.ListAccess(audit_pb2.ListAccessRequest(page_size=1000), metadata=md(AUDIT_TOKEN))
    anonymous = [a for a in everything.records if a.principal == "(unauthenticated)"
                 and a.method == "/lianxi.v1.Cases/GetCase" and not a.allowed]
    check(len(anonymous) == 2, f"{len(anonymous)} unauthenticated GetCase refusals in the access log, 2 made")

    # -------------------------------------------------------- reflection
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    for s in ("lianxi.v1.Cases", "lianxi.v1.Audit", "lianxi.v1.Intake", "grpc.health.v1.Health"):
        check(s in services, f"reflection (v1alpha) does not list {s}: {sorted(services)}")
    pool = descriptor_pool.DescriptorPool(db)
    m = pool.FindServiceByName("lianxi.v1.Cases").FindMethodByName("GetCase")
    check(m.input_type.full_name == "lianxi.v1.GetCaseRequest", f"GetCase takes {m.input_type.full_name}")
    # A call built from reflection alone: the health check, no stubs.
    health = pool.FindServiceByName("grpc.health.v1.Health").FindMethodByName("Check")
    Req = message_factory.GetMessageClass(health.input_type)
    Resp = message_factory.GetMessageClass(health.output_type)
    check_call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                     request_serializer=Req.SerializeToString,
                                     response_deserializer=Resp.FromString)
    h = check_call(Req(service=""), timeout=5)
    check(health.output_type.enum_types_by_name["ServingStatus"].values_by_number[h.status].name == "SERVING",
          f"health: {h}")
    channel.close()

    print(f"outside-client: OK: published {stats['published']} messages; receipts: "
          f"{stats['accepted']} accepted, {stats['duplicate']} duplicate, {stats['rejected']} rejected "
          f"(each with a readable reason) in {live.batches} batches; {len(burst)} published together came "
          f"in {burst_batches}; 1 missed receipt read from the durable consumer; "
          f"timeline of {len(entries)} entries matches the receipts' hashes; "
          f"reflection v1alpha lists {len(services)} services")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--stubs", required=True, help="directory of the generated lianxi/v1/*_pb2*.py")
    a = p.parse_args()
    try:
        asyncio.run(main(a))
    except Mismatch as e:
        print(f"outside-client: MISMATCH: {e}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as e:
        print(f"outside-client: MISMATCH: a gRPC call failed: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
