//! A member's session on the replica its client connected to: joined to the group's
//! coordinator where this replica runs it, relayed to the owning replica's `Subscribe`
//! otherwise, and moved to the next owner when the one it reached stops running the group.
//!
//! - The client's stream stays open across moves: it sees one `Subscribed` (the first), then
//!   deliveries from whichever replica runs the group. A new owner starts from the committed
//!   offset, so events delivered but not acked (or acked but not yet committed) may come again.
//! - A relayed stream carries [`RELAY_HEADER`]: the owner serves it from its own coordinator or
//!   answers UNAVAILABLE, and never relays it on, so a relay never chains.
//! - Acks go to the attachment in use; acks that arrive between two attachments are dropped,
//!   and their events are delivered again by the new owner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use trellis_cluster::MemberInfo;
use trellis_proto::v1::trellis_client::TrellisClient;
use trellis_proto::v1::{
    self, SubscribeRequest, SubscribeResponse, subscribe_request, subscribe_response,
};

use super::group::{Attachment, Local, MemberStream, Membership, SlotState, moved};
use super::{BoxStream, GrpcService, shutting_down};

/// The metadata header of a stream one replica opens to another for one of its members.
pub(crate) const RELAY_HEADER: &str = "trellis-relayed-by";

pub(crate) const GROUP_RELAYS: &str = "trellis_group_relays";
pub(crate) const GROUP_RELAY_RECONNECTS: &str = "trellis_group_relay_reconnects_total";

pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        GROUP_RELAYS,
        "Consumer-group members of this replica's clients relayed to the replica that owns their group now."
    );
    metrics::describe_counter!(
        GROUP_RELAY_RECONNECTS,
        "Times a member's session joined its group again (another owner, or the same one after a failure)."
    );
}

/// How long opening a relayed stream may take before the owner is looked up again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a session without an owner to go to looks again, besides the watches waking it.
const RESOLVE_POLL: Duration = Duration::from_millis(250);
/// Backoff between attempts: from the first to the most.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a member that left cleanly waits for the owner to end the relayed stream, so its
/// last acks are taken before the stream is cut.
const LEAVE_GRACE: Duration = Duration::from_secs(5);
/// How long the closing status of a client's stream may wait for room in it.
const FINISH_GRACE: Duration = Duration::from_secs(1);
/// Refusals the owner gives a relayed subscription (a topic it does not know yet, say) before
/// the session passes them to its client: replicas learn of topics within moments.
const REFUSALS_BEFORE_PASSING_ON: u32 = 5;

/// One channel per replica address, reused by every relay to it (HTTP/2 carries the streams).
#[derive(Default)]
pub(crate) struct Upstreams {
    channels: std::sync::Mutex<HashMap<String, Channel>>,
}

impl Upstreams {
    /// The channel to `address`; a new one drops those to addresses no live member has (a
    /// replica restarted elsewhere), so the cache stays as small as the cluster.
    fn channel(&self, address: &str, live: &[MemberInfo]) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        channels.retain(|known, _| {
            live.iter()
                .any(|member| member.grpc.as_deref() == Some(known.as_str()))
        });
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| format!("{address}: {error}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(trellis_proto::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(trellis_proto::CONNECTION_WINDOW_BYTES)
            // A frozen owner is noticed by its unanswered pings, if its lease has not ended first.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Where a session goes next.
enum Target {
    Local(Local),
    Remote { owner: String, address: String },
}

/// How one attachment ended.
enum Step {
    /// Find the group's owner again.
    Again { got_any: bool },
    /// The session is over: the client left, or it was sent a final status.
    Done,
}

/// What the client sent.
enum FromClient {
    Ack(Vec<u64>),
    Gone,
    Invalid,
}

/// A member of one of this replica's clients, in a shared group.
pub(super) struct Session {
    pub(super) service: Arc<GrpcService>,
    pub(super) attachment: Attachment,
    /// As the client sent it: a relay sends it on unchanged.
    pub(super) subscription: v1::Subscription,
    pub(super) max_unacked: usize,
    pub(super) ack_timeout: Duration,
    pub(super) inbound: Streaming<SubscribeRequest>,
    pub(super) out: mpsc::Sender<Result<SubscribeResponse, Status>>,
    /// `Subscribed` was sent to the client (once per stream).
    pub(super) subscribed: bool,
}

impl Session {
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        // Permanent refusals by owners in a row (reset once a stream delivered anything).
        let mut refusals: u32 = 0;
        loop {
            let Some(target) = self.resolve().await else {
                return;
            };
            let step = match target {
                Target::Local(local) => self.pump_local(&local).await,
                Target::Remote { owner, address } => {
                    let relays = metrics::gauge!(GROUP_RELAYS);
                    relays.increment(1.0);
                    let step = self.pump_remote(&owner, &address, &mut refusals).await;
                    relays.decrement(1.0);
                    step
                }
            };
            match step {
                Step::Done => return,
                Step::Again { got_any } => {
                    metrics::counter!(GROUP_RELAY_RECONNECTS).increment(1);
                    if got_any {
                        (failures, refusals) = (0, 0);
                    } else {
                        failures += 1;
                    }
                    let wait = RETRY_MIN
                        .saturating_mul(1 << failures.min(5))
                        .min(RETRY_MAX);
                    tokio::select! {
                        () = self.service.shutdown.cancelled() => {
                            self.finish(shutting_down()).await;
                            return;
                        }
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Waits until the group runs here or has an owner elsewhere with a gRPC address. `None`:
    /// the session is over (the client left, shutdown, or the group ended with a status the
    /// client was sent).
    async fn resolve(&mut self) -> Option<Target> {
        let mut state = self.attachment.slot.state.subscribe();
        let mut owner = self.attachment.slot.owner.clone();
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                SlotState::Running(local) => return Some(Target::Local(local)),
                SlotState::Ended(status) => {
                    self.finish(status).await;
                    return None;
                }
                SlotState::Elsewhere => {}
            }
            let owner_id = owner.borrow_and_update().clone();
            let groups = &self.service.groups;
            if let Some(owner_id) = owner_id
                && owner_id != groups.member_id()
                && let Some(address) = groups
                    .cluster
                    .members()
                    .into_iter()
                    .find(|member| member.id == owner_id)
                    .and_then(|member| member.grpc)
            {
                return Some(Target::Remote {
                    owner: owner_id,
                    address,
                });
            }
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.finish(shutting_down()).await;
                    return None;
                }
                () = changed(&mut state) => {}
                () = changed(&mut owner) => {}
                () = tokio::time::sleep(RESOLVE_POLL) => {}
                // Acks while the group has nowhere to take them: their events come again.
                message = next_from_client(&mut self.inbound) => match message {
                    FromClient::Ack(_) => {}
                    FromClient::Gone => return None,
                    FromClient::Invalid => {
                        self.refuse_second_request().await;
                        return None;
                    }
                },
            }
        }
    }

    /// Joined to the coordinator running on this replica.
    async fn pump_local(&mut self, local: &Local) -> Step {
        let id = self.service.groups.next_member_id();
        let Ok((membership, mut stream)) = local.join(id, self.max_unacked, self.ack_timeout)
        else {
            return Step::Again { got_any: false };
        };
        let mut got_any = false;
        loop {
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.finish(shutting_down()).await;
                    return Step::Done;
                }
                message = next_from_client(&mut self.inbound) => match message {
                    FromClient::Ack(offsets) => {
                        if !membership.ack(offsets).await {
                            return Step::Again { got_any };
                        }
                    }
                    // Dropping the membership leaves the group after the acks sent before.
                    FromClient::Gone => return Step::Done,
                    FromClient::Invalid => {
                        drop(membership);
                        self.refuse_second_request().await;
                        return Step::Done;
                    }
                },
                response = stream.recv() => match response {
                    Some(Ok(_)) if !membership.may_deliver() => return Step::Again { got_any },
                    Some(Ok(response)) => {
                        got_any = true;
                        if !self.forward(response).await {
                            return Step::Done;
                        }
                    }
                    Some(Err(status)) => return self.ended_with(status, got_any).await,
                    None => return Step::Again { got_any },
                },
            }
        }
    }

    /// Relayed to the replica `owner` at `address`.
    async fn pump_remote(&mut self, owner: &str, address: &str, refusals: &mut u32) -> Step {
        let live = self.service.groups.cluster.members();
        let channel = match self.service.groups.upstreams.channel(address, &live) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(message = "A replica's gRPC address is unusable.", %error);
                return Step::Again { got_any: false };
            }
        };
        let max_message = super::max_message_bytes(&self.service.config);
        let mut client = TrellisClient::new(channel)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let (requests, outgoing) = mpsc::channel(64);
        let first = SubscribeRequest {
            request: Some(subscribe_request::Request::Subscription(
                self.subscription.clone(),
            )),
        };
        if requests.send(first).await.is_err() {
            return Step::Again { got_any: false };
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        let relayer = self
            .service
            .groups
            .member_id()
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("replica"));
        request.metadata_mut().insert(RELAY_HEADER, relayer);
        let mut owner_watch = self.attachment.slot.owner.clone();
        let opened = tokio::select! {
            () = self.service.shutdown.cancelled() => {
                self.finish(shutting_down()).await;
                return Step::Done;
            }
            () = moved_from(&mut owner_watch, owner) => return Step::Again { got_any: false },
            opened = tokio::time::timeout(CONNECT_TIMEOUT, client.subscribe(request)) => opened,
        };
        let mut upstream = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                if is_permanent(status.code()) {
                    *refusals += 1;
                    if *refusals >= REFUSALS_BEFORE_PASSING_ON {
                        self.finish(status).await;
                        return Step::Done;
                    }
                }
                tracing::debug!(message = "A relayed subscription was refused.", owner, %status);
                return Step::Again { got_any: false };
            }
            Err(_) => return Step::Again { got_any: false },
        };
        tracing::debug!(message = "Relaying a consumer-group member.", owner);
        let mut got_any = false;
        loop {
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.finish(shutting_down()).await;
                    return Step::Done;
                }
                // The owner it reached lost the group (a frozen or cut-off one may never say).
                () = moved_from(&mut owner_watch, owner) => return Step::Again { got_any },
                message = next_from_client(&mut self.inbound) => match message {
                    FromClient::Ack(offsets) => {
                        let ack = SubscribeRequest {
                            request: Some(subscribe_request::Request::Ack(v1::Ack { offsets })),
                        };
                        // An owner that reads nothing (frozen) must not hold the session.
                        tokio::select! {
                            sent = requests.send(ack) => if sent.is_err() {
                                return Step::Again { got_any };
                            },
                            () = moved_from(&mut owner_watch, owner) => return Step::Again { got_any },
                        }
                    }
                    FromClient::Gone => {
                        // Leaves cleanly: the owner ends the stream once it has the acks.
                        drop(requests);
                        let _ = tokio::time::timeout(LEAVE_GRACE, async {
                            while let Ok(Some(_)) = upstream.message().await {}
                        })
                        .await;
                        return Step::Done;
                    }
                    FromClient::Invalid => {
                        self.refuse_second_request().await;
                        return Step::Done;
                    }
                },
                response = upstream.message() => match response {
                    Ok(Some(response)) => {
                        got_any = true;
                        if !self.forward(response).await {
                            return Step::Done;
                        }
                    }
                    Ok(None) => return Step::Again { got_any },
                    Err(status) => return self.ended_with(status, got_any).await,
                },
            }
        }
    }

    /// The group's stream ended with `status`: a transient one sends the session to the
    /// group's owner again, any other ends the client's stream with it.
    async fn ended_with(&mut self, status: Status, got_any: bool) -> Step {
        if self.service.shutdown.is_cancelled() {
            self.finish(shutting_down()).await;
            return Step::Done;
        }
        if is_permanent(status.code()) {
            self.finish(status).await;
            return Step::Done;
        }
        tracing::debug!(message = "A consumer-group member moves on.", %status);
        Step::Again { got_any }
    }

    /// Passes a response to the client; the first `Subscribed` only. False: the client left,
    /// or Trellis shuts down while the client reads nothing.
    async fn forward(&mut self, response: SubscribeResponse) -> bool {
        if let Some(subscribe_response::Response::Subscribed(_)) = &response.response {
            if self.subscribed {
                return true;
            }
            self.subscribed = true;
        }
        tokio::select! {
            sent = self.out.send(Ok(response)) => sent.is_ok(),
            () = self.service.shutdown.cancelled() => false,
        }
    }

    /// Ends the client's stream with `status`, unless the client reads nothing for a while.
    async fn finish(&mut self, status: Status) {
        let _ = tokio::time::timeout(FINISH_GRACE, self.out.send(Err(status))).await;
    }

    async fn refuse_second_request(&mut self) {
        self.finish(Status::invalid_argument(
            "after the first request a Subscribe stream takes only `ack`s",
        ))
        .await;
    }
}

/// Statuses a client is given as they are; any other makes the session look for the owner.
fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

async fn next_from_client(inbound: &mut Streaming<SubscribeRequest>) -> FromClient {
    match inbound.message().await {
        Ok(Some(SubscribeRequest {
            request: Some(subscribe_request::Request::Ack(ack)),
        })) => FromClient::Ack(ack.offsets),
        Ok(Some(_)) => FromClient::Invalid,
        Ok(None) => FromClient::Gone,
        Err(status) => {
            tracing::debug!(message = "A Subscribe stream failed.", %status);
            FromClient::Gone
        }
    }
}

/// Resolves on the next change; never if the sender is gone.
async fn changed<T>(receiver: &mut watch::Receiver<T>) {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves once the owner is no longer `from`.
async fn moved_from(owner: &mut watch::Receiver<Option<String>>, from: &str) {
    loop {
        if owner.borrow_and_update().as_deref() != Some(from) {
            return;
        }
        changed(owner).await;
    }
}

/// A member's stream served from this replica's own coordinator (a relayed member, or an
/// unnamed broadcast member): acks are passed on until the client's requests end. Once the
/// replica no longer holds the group, what was queued is not sent: the stream ends.
pub(super) fn serve_joined(
    service: &GrpcService,
    attachment: Attachment,
    membership: Membership,
    deliveries: MemberStream,
    mut inbound: Streaming<SubscribeRequest>,
) -> BoxStream<SubscribeResponse> {
    let shutdown = service.shutdown.clone();
    let held = membership.holder();
    service.groups.spawn(async move {
        loop {
            let next = tokio::select! {
                next = next_from_client(&mut inbound) => next,
                () = shutdown.cancelled() => break,
            };
            match next {
                FromClient::Ack(offsets) => {
                    if !membership.ack(offsets).await {
                        break;
                    }
                }
                FromClient::Invalid => {
                    // Only acks may follow the first request; the member leaves, and what it
                    // held goes to the others.
                    membership.refuse(Status::invalid_argument(
                        "after the first request a Subscribe stream takes only `ack`s",
                    ));
                    break;
                }
                FromClient::Gone => break,
            }
        }
        drop(membership);
        drop(attachment);
    });
    Box::pin(futures::stream::unfold(
        (deliveries, held, false),
        |(mut deliveries, held, ended)| async move {
            if ended {
                return None;
            }
            let next = deliveries.recv().await?;
            if next.is_ok() && !held() {
                return Some((Err(moved()), (deliveries, held, true)));
            }
            Some((next, (deliveries, held, false)))
        },
    ))
}
