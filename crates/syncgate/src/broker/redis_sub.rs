//! The Redis broker's subscriber side: the subscriber connection (standalone or cluster,
//! RESP3 pushes), and the task that keeps one session at a time subscribed to what the hub
//! needs, reconnecting with backoff after a loss and checking the publisher connection.

use super::*;

enum SubConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Set by a session's push callback when its connection is gone.
#[derive(Default)]
struct Lost {
    notify: Notify,
}

impl SubConn {
    /// Opens a RESP3 connection whose pushes (messages, disconnection) go to `shared`.
    async fn open(endpoint: &Endpoint, shared: &Arc<Shared>, lost: &Arc<Lost>) -> Result<SubConn, RedisError> {
        let (s, l) = (shared.clone(), lost.clone());
        let on_push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            match info.kind {
                PushKind::Message | PushKind::SMessage => s.on_message(info.data),
                PushKind::Disconnection => l.notify.notify_one(),
                _ => {}
            }
            Ok(())
        };
        if endpoint.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(endpoint.nodes.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(on_push)
                .connection_timeout(endpoint.connect_timeout)
                .response_timeout(endpoint.response_timeout)
                .retries(1)
                .build()?;
            Ok(SubConn::Cluster(client.get_async_connection().await?))
        } else {
            // With Sentinel: the current master, looked up again on every (re)connect.
            let info = endpoint.master().await?;
            let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(endpoint.connect_timeout))
                .set_response_timeout(Some(endpoint.response_timeout))
                .set_push_sender(on_push);
            Ok(SubConn::Single(client.get_multiplexed_async_connection_with_config(&cfg).await?))
        }
    }

    async fn subscribe(&mut self, channels: &[String], sharded: bool) -> Result<(), RedisError> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            SubConn::Single(c) => {
                for chunk in channels.chunks(256) {
                    c.subscribe(chunk).await?;
                }
                Ok(())
            }
            // One channel per call (sharded channels of one call must share a slot), many calls
            // in flight: the connection pipelines them per node.
            SubConn::Cluster(c) => {
                let calls: Vec<_> = channels
                    .iter()
                    .map(|ch| {
                        let mut c = c.clone();
                        async move {
                            if sharded {
                                c.ssubscribe(ch).await
                            } else {
                                c.subscribe(ch).await
                            }
                        }
                    })
                    .collect();
                futures_util::stream::iter(calls).buffer_unordered(64).try_collect::<Vec<()>>().await.map(|_| ())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str, sharded: bool) -> Result<(), RedisError> {
        match self {
            SubConn::Single(c) => c.unsubscribe(channel).await,
            SubConn::Cluster(c) if sharded => c.sunsubscribe(channel).await,
            SubConn::Cluster(c) => c.unsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> Result<(), RedisError> {
        match self {
            SubConn::Single(c) => redis::cmd("PING").query_async(c).await,
            SubConn::Cluster(c) => redis::cmd("PING").query_async(c).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The broker.

/// The subscriber task: one session per connection; after a loss, waits (exponential backoff
/// with jitter), reconnects and subscribes again to everything still needed.
pub(super) async fn subscriber_loop(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    opts: RedisBrokerOptions,
    mut publisher: RedisConn,
    cancel: CancellationToken,
    first: oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut sessions = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let lost = Arc::new(Lost::default());
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session(&shared, &endpoint, &opts, &mut publisher, &lost, &cancel, &mut first, &mut sessions) => r,
        };
        shared.sub_ready.store(false, Ordering::Release);
        match outcome {
            SessionEnd::Cancelled => return,
            SessionEnd::Lost { was_up, error } => {
                if was_up {
                    backoff = Duration::from_millis(100);
                    tracing::warn!(error = %error, "redis broker: subscriber connection lost, reconnecting");
                } else {
                    tracing::debug!(error = %error, "redis broker: subscriber cannot connect yet");
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(error));
                    return; // `connect` failed: nobody uses this broker
                }
            }
        }
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff / 2 + jitter) => {}
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

enum SessionEnd {
    Cancelled,
    /// The connection failed; `was_up` if it had been subscribed.
    Lost {
        was_up: bool,
        error: String,
    },
}

#[allow(clippy::too_many_arguments)]
async fn session(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    opts: &RedisBrokerOptions,
    publisher: &mut RedisConn,
    lost: &Arc<Lost>,
    cancel: &CancellationToken,
    first: &mut Option<oneshot::Sender<Result<(), String>>>,
    sessions: &mut u64,
) -> SessionEnd {
    let limit = opts.connect_timeout + opts.response_timeout;
    let down = |e: String| SessionEnd::Lost { was_up: false, error: e };
    let mut conn = match tokio::time::timeout(limit, SubConn::open(endpoint, shared, lost)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return down(e.to_string()),
        Err(_) => return down("connect timed out".into()),
    };
    // Changes queued before this point are covered by the snapshot below; changes after it
    // stay queued and are applied in the loop.
    shared.queue.take();
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut want: Vec<String> = shared.base_channels().into();
    want.extend(shared.hub.local_users().into_iter().map(|u| shared.channel(&Topic::User(u))));
    want.extend(shared.hub.local_rooms().into_iter().map(|r| shared.channel(&Topic::Room(r))));
    // Subscribing many channels takes a while: the time limit grows with their number.
    let budget = limit + opts.response_timeout * (want.len() / 256) as u32;
    match tokio::time::timeout(budget, conn.subscribe(&want, shared.sharded)).await {
        Ok(Ok(())) => subscribed.extend(want),
        Ok(Err(e)) => return down(e.to_string()),
        Err(_) => return down("subscribe timed out".into()),
    }
    *sessions += 1;
    if *sessions > 1 {
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(channels = subscribed.len(), "redis broker: subscriber reconnected");
        shared.resubscribed(Resubscribed::Everything);
    }
    shared.sub_ready.store(true, Ordering::Release);
    if let Some(tx) = first.take() {
        let _ = tx.send(Ok(()));
    }
    let up = |e: String| SessionEnd::Lost { was_up: true, error: e };
    // A publish that failed while the subscriber was down keeps the node not ready until the
    // publisher answers again: check it now, and every 200 ms while it does not.
    check_publisher(shared, publisher, limit).await;
    let mut health = tokio::time::interval(opts.health_interval);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            _ = lost.notify.notified() => return up("connection closed".into()),
            _ = shared.queue.wake.notified() => {
                for topic in shared.queue.take() {
                    let channel = shared.channel(&topic);
                    let (want, have) = (shared.wanted(&topic), subscribed.contains(&channel));
                    let r = if want && !have {
                        tokio::time::timeout(limit, conn.subscribe(std::slice::from_ref(&channel), shared.sharded)).await
                    } else if !want && have {
                        tokio::time::timeout(limit, conn.unsubscribe(&channel, shared.sharded)).await
                    } else {
                        continue;
                    };
                    match r {
                        Ok(Ok(())) if want => {
                            subscribed.insert(channel);
                            shared.resubscribed(match topic {
                                Topic::User(u) => Resubscribed::User(u),
                                Topic::Room(r) => Resubscribed::Room(r),
                            });
                        }
                        Ok(Ok(())) => { subscribed.remove(&channel); }
                        Ok(Err(e)) => return up(e.to_string()),
                        Err(_) => return up("subscription change timed out".into()),
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if !shared.publish_ok.load(Ordering::Acquire) => {
                check_publisher(shared, publisher, limit).await;
            }
            _ = health.tick() => {
                match tokio::time::timeout(limit, conn.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return up(format!("ping: {e}")),
                    Err(_) => return up("ping timed out".into()),
                }
                check_publisher(shared, publisher, limit).await;
            }
        }
    }
}

/// Pings the publisher connection (which reconnects by itself) and records whether it
/// answers, for `is_ready`.
async fn check_publisher(shared: &Shared, publisher: &mut RedisConn, limit: Duration) {
    let ok = tokio::time::timeout(limit, redis::cmd("PING").query_async::<()>(publisher)).await;
    match ok {
        Ok(Ok(())) => shared.publish_ok.store(true, Ordering::Release),
        Ok(Err(e)) if is_unavailable(&e) => shared.publish_ok.store(false, Ordering::Release),
        Ok(Err(_)) => {}
        Err(_) => shared.publish_ok.store(false, Ordering::Release),
    }
}
