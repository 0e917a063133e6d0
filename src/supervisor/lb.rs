//! The LB pool: the listeners, the forked LB children on them, the control sequence, the
//! backend set last sent, and the counters of children that exited. Forks and re-forks
//! children on the same listener, drains them, fans out backend sets and settings, takes in
//! their acks and metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mio::Registry;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::children::{self, ChildMetrics, ChildStart, ChildState, ControlChannel, LbChild};
use super::fleet::LbView;
use super::metrics::{BackendView, Retired};
use super::{LbListener, Tokens, autoscale};
use crate::config::{Config, ProxySettings};
use crate::proxy::control::{BackendSpec, BackendState, Down, QueueFigures, Up};
use crate::sys::log::quote;
use crate::sys::signals::Signals;
use crate::{error, info, warn};

/// A child that dies younger than this is re-forked after a growing delay.
const YOUNG_DEATH: Duration = Duration::from_secs(2);
/// Longest delay before re-forking a crashing child.
const MAX_REFORK_DELAY: Duration = Duration::from_secs(5);

/// What a fork needs from the loop: its registry, its tokens, its signal handlers (dropped
/// in the child).
pub struct ForkCtx<'a> {
    /// The loop's registry (the control channel is registered on it).
    pub registry: &'a Registry,
    /// The loop's token counter.
    pub tokens: &'a mut Tokens,
    /// The supervisor's signals.
    pub signals: &'a mut Option<Signals>,
    /// The account a child switches to after fork (none: it keeps ours).
    pub account: Option<&'a crate::sys::privilege::Account>,
}

/// Listeners and the LB children serving them.
#[derive(Debug)]
pub struct LbPool {
    /// The LB listeners, in LB index order (one with `shared-port`).
    pub listeners: Vec<LbListener>,
    /// Next listener id (a reload's new listeners get fresh ids).
    pub next_listener_id: u64,
    /// With `shared-port`: the listening socket of each LB index past 0, in one SO_REUSEPORT
    /// group with the port's listener (index 0 uses that one). Kept across child restarts, so
    /// a successor accepts what queued while its predecessor was replaced.
    members: Vec<GroupMember>,
    children: Vec<LbChild>,
    /// Per LB index: earliest next fork (backoff after a child crashed young) and restarts.
    backoff: HashMap<usize, (Instant, u32)>,
    restarts: u64,
    /// Access-log lines dropped by children that are gone.
    access_log_dropped_gone: u64,
    /// Retries refused for lack of budget by children that exited.
    retry_budget_refused_gone: u64,
    /// Wait-queue figures of children that exited.
    queue_gone: QueueFigures,
    /// Last Down seq handed out.
    seq: u64,
    /// Backend set last sent to the children.
    sent: Vec<BackendSpec>,
    /// Upgrade hand-over: the children keep `sent` (see [`LbPool::hold_backends`]).
    held: bool,
    retired: Retired,
    /// p90 of the requests completed between two samples.
    latency: autoscale::LatencyWindow,
    /// What the children told since the supervisor last asked (demand, fresh metrics).
    news: Received,
}

/// What a child's messages brought that the supervisor acts on at once.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Received {
    /// `Up::Demand` signals: requests that found no worker (None: no signal).
    pub demand: Option<u64>,
    /// A metrics report arrived.
    pub metrics: bool,
}

/// One LB index's own socket in a shared port's group.
#[derive(Debug)]
struct GroupMember {
    index: usize,
    listener_id: u64,
    socket: std::net::TcpListener,
}

impl LbView for LbPool {
    fn serving(&self) -> bool {
        !self.children.is_empty()
    }

    fn drained(&self, id: &str, seq: u64) -> bool {
        self.children
            .iter()
            .filter(|c| !c.conn.is_closed())
            .all(|c| {
                c.metrics_basis >= seq
                    && c.metrics.as_ref().is_some_and(|m| {
                        m.backends
                            .iter()
                            .filter(|b| b.id == id)
                            .all(|b| b.in_flight == 0)
                    })
            })
    }
}

impl LbPool {
    /// A pool on bound listeners, no child yet.
    pub fn new(listeners: Vec<LbListener>) -> LbPool {
        LbPool {
            next_listener_id: listeners.len() as u64,
            listeners,
            members: Vec::new(),
            children: Vec::new(),
            backoff: HashMap::new(),
            restarts: 0,
            access_log_dropped_gone: 0,
            retry_budget_refused_gone: 0,
            queue_gone: QueueFigures::default(),
            seq: 0,
            sent: Vec::new(),
            held: false,
            retired: Retired::default(),
            latency: autoscale::LatencyWindow::new(),
            news: Received::default(),
        }
    }

    /// The last Down seq handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The children, live or draining.
    pub fn children(&self) -> &[LbChild] {
        &self.children
    }

    /// Children re-forked after dying.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The address of listener `id`, if still open.
    pub fn listener_addr(&self, id: u64) -> Option<std::net::SocketAddr> {
        self.listeners.iter().find(|l| l.id == id).map(|l| l.addr)
    }

    /// Client connections open across children (latest reports).
    pub fn connections(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.connections))
            .sum()
    }

    /// Sends `sig` to every child (SIGUSR1: reopen the access-log file).
    pub fn signal_all(&self, sig: Signal) {
        for c in &self.children {
            let _ = kill(c.pid, sig);
        }
    }

    /// Access-log lines dropped by every child, gone ones included.
    pub fn access_log_dropped(&self) -> u64 {
        let live: u64 = self
            .children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.access_log_dropped))
            .sum();
        live + self.access_log_dropped_gone
    }

    /// Retries refused for lack of budget by every child, gone ones included.
    pub fn retry_budget_refused(&self) -> u64 {
        let live: u64 = self
            .children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.retry_budget_refused))
            .sum();
        live + self.retry_budget_refused_gone
    }

    /// Wait-queue figures of every child, gone ones included.
    pub fn queue_figures(&self) -> QueueFigures {
        self.children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.queue))
            .fold(self.queue_gone, QueueFigures::plus)
    }

    /// Children running (not draining).
    pub fn running(&self) -> usize {
        self.children
            .iter()
            .filter(|c| c.state == ChildState::Running)
            .count()
    }

    /// Index into `listeners` of LB child `i`.
    fn listener_of(cfg: &Config, i: usize) -> usize {
        if cfg.shared_port { 0 } else { i }
    }

    /// Forks every LB child that should run and does not (start, crash, reload), then
    /// drains the children they replace.
    pub fn ensure_children(
        &mut self,
        now: Instant,
        cfg: &Config,
        backends: &[BackendSpec],
        ctx: &mut ForkCtx<'_>,
    ) {
        for i in 0..cfg.pool {
            let li = Self::listener_of(cfg, i);
            let Some(listener_id) = self.listeners.get(li).map(|l| l.id) else {
                continue;
            };
            let serving = self.children.iter().any(|c| {
                c.index == i
                    && c.listener_id == listener_id
                    && c.state == ChildState::Running
                    && !c.retiring
            });
            if serving {
                continue;
            }
            if let Some((not_before, _)) = self.backoff.get(&i)
                && now < *not_before
            {
                continue;
            }
            self.fork(i, li, now, cfg, backends, ctx);
        }
        self.leave_unused_members(cfg);
        // Successors exist now: the children they replace stop accepting and drain.
        let retiring: Vec<usize> = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.retiring && c.state == ChildState::Running)
            .map(|(k, _)| k)
            .collect();
        let timeout = cfg.drain_timeout_ms;
        for k in retiring {
            self.drain_child(
                k,
                timeout,
                now + Duration::from_millis(timeout) + Duration::from_secs(2),
            );
        }
    }

    fn fork(
        &mut self,
        i: usize,
        li: usize,
        now: Instant,
        cfg: &Config,
        backends: &[BackendSpec],
        ctx: &mut ForkCtx<'_>,
    ) {
        let name = format!("lb.{i}");
        let Some(listener) = self.listeners.get(li) else {
            return;
        };
        let listener_id = listener.id;
        let addr = listener.addr;
        let socket = if cfg.shared_port && i > 0 {
            self.member_socket(i, li)
        } else {
            &listener.socket
        };
        let result = children::fork_child(
            ChildStart {
                name: name.clone(),
                listener: socket,
                backends: backends.to_vec(),
                settings: cfg.proxy.clone(),
                drain_timeout_ms: cfg.drain_timeout_ms,
                account: ctx.account,
            },
            ctx.signals,
        );
        let (pid, ours) = match result {
            Ok(r) => r,
            Err(e) => {
                error!("lb_fork_failed", "lb={i} error={}", quote(&e.to_string()));
                self.backoff.insert(i, (now + Duration::from_secs(1), 1));
                return;
            }
        };
        let token = ctx.tokens.next();
        let registered = ControlChannel::new(ours).and_then(|mut c| {
            c.register(ctx.registry, token)?;
            Ok(c)
        });
        let conn = match registered {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "lb_control_failed",
                    "lb={i} error={}",
                    quote(&e.to_string())
                );
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
        };
        info!(
            "lb_child_forked",
            "lb={i} pid={pid} listen={addr} backends={}",
            backends.len()
        );
        self.children.push(LbChild {
            pid,
            index: i,
            listener_id,
            name,
            retiring: false,
            conn,
            token,
            state: ChildState::Running,
            started: now,
            acked_seq: self.seq,
            metrics_basis: self.seq,
            metrics: None,
            metrics_at: None,
            bad_lines: 0,
        });
    }

    /// The socket of LB index `i` (> 0) on shared listener `li`: its group member, joined on
    /// first use; the listener itself when joining fails (its children then share one queue).
    fn member_socket(&mut self, i: usize, li: usize) -> &std::net::TcpListener {
        let listener = &self.listeners[li];
        let known = self
            .members
            .iter()
            .position(|m| m.index == i && m.listener_id == listener.id);
        let k = match known {
            Some(k) => k,
            None => match crate::sys::net::join_port_group(&listener.socket) {
                Ok(socket) => {
                    info!("port_group_joined", "lb={i} listen={}", listener.addr);
                    self.members.push(GroupMember {
                        index: i,
                        listener_id: listener.id,
                        socket,
                    });
                    self.members.len() - 1
                }
                Err(e) => {
                    warn!(
                        "port_group_failed",
                        "lb={i} listen={} error={} action=\"share the listener\"",
                        listener.addr,
                        quote(&e.to_string())
                    );
                    return &listener.socket;
                }
            },
        };
        &self.members[k].socket
    }

    /// Takes out of the port group the members no LB index of `cfg` uses any more (pool
    /// shrunk, port moved, shared-port off): at once, so nothing queues on a socket whose
    /// child is draining.
    fn leave_unused_members(&mut self, cfg: &Config) {
        let current = self.listeners.first().map(|l| l.id);
        let (keep, leave): (Vec<_>, Vec<_>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| cfg.shared_port && m.index < cfg.pool && Some(m.listener_id) == current);
        self.members = keep;
        for m in leave {
            info!("port_group_left", "lb={}", m.index);
            crate::sys::net::leave_port_group(m.socket);
        }
    }

    /// Closes our copies of the listeners (stop, upgrade): the ports close once the children
    /// holding them exit, and the group members leave their group at once.
    pub fn close_listeners(&mut self) {
        self.listeners.clear();
        for m in self.members.drain(..) {
            crate::sys::net::leave_port_group(m.socket);
        }
    }

    /// Sends the backend set to every child when it changed (and the set is not held).
    pub fn publish_backends(&mut self, set: Vec<BackendSpec>) {
        if self.held || set == self.sent {
            return;
        }
        let seq = self.next_seq();
        let ids = |state: BackendState| {
            set.iter()
                .filter(|b| b.state == state)
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        info!(
            "backends_changed",
            "seq={seq} active={} draining={}",
            ids(BackendState::Active),
            ids(BackendState::Draining)
        );
        let msg = Down::Backends {
            seq,
            backends: set.clone(),
        };
        self.sent = set;
        self.send_all(&msg);
    }

    /// Upgrade hand-over: from now on the children keep the backend set last sent. The
    /// workers in it are the new supervisor's, which replaces them one at a time on the same
    /// addresses (a request finding the one being replaced closed is retried on another);
    /// this supervisor no longer knows them, and an empty set would make its draining
    /// children answer 503 to the requests still reaching them.
    pub fn hold_backends(&mut self) {
        self.held = true;
    }

    /// Sends new settings to every child.
    pub fn publish_settings(&mut self, settings: &ProxySettings) {
        let seq = self.next_seq();
        let msg = Down::Settings {
            seq,
            settings: Box::new(settings.clone()),
        };
        self.send_all(&msg);
    }

    fn send_all(&mut self, msg: &Down) {
        for c in &mut self.children {
            if c.conn.is_closed() {
                continue;
            }
            if let Err(e) = c.conn.send(msg) {
                warn!(
                    "lb_control_send_failed",
                    "lb={} pid={} error={}",
                    c.index,
                    c.pid,
                    quote(&e.to_string())
                );
                // A child that cannot take its messages is replaced.
                let _ = kill(c.pid, Signal::SIGKILL);
            }
        }
    }

    /// Tells child `k` to drain.
    fn drain_child(&mut self, k: usize, timeout_ms: u64, deadline: Instant) {
        let seq = self.next_seq();
        let Some(c) = self.children.get_mut(k) else {
            return;
        };
        if let ChildState::Draining { .. } = c.state {
            return;
        }
        info!(
            "lb_child_draining",
            "lb={} pid={} timeout_ms={timeout_ms}", c.index, c.pid
        );
        c.state = ChildState::Draining { deadline };
        if c.conn.send(&Down::Drain { seq, timeout_ms }).is_err() {
            let _ = kill(c.pid, Signal::SIGTERM);
        }
    }

    /// Stop: every child drains.
    pub fn drain_all(&mut self, timeout_ms: u64, deadline: Instant) {
        for k in 0..self.children.len() {
            self.drain_child(k, timeout_ms, deadline);
        }
    }

    /// Kills draining children past their deadline.
    pub fn drain_past_deadline(&mut self, now: Instant) {
        for c in &self.children {
            if let ChildState::Draining { deadline } = c.state
                && now >= deadline
            {
                warn!("lb_child_drain_timeout", "lb={} pid={}", c.index, c.pid);
                let _ = kill(c.pid, Signal::SIGKILL);
            }
        }
    }

    /// SIGKILL to every child, and reap them.
    pub fn kill_all(&mut self, why: &str, registry: &Registry) {
        for c in &mut self.children {
            warn!(
                "lb_child_kill",
                "lb={} pid={} reason={}",
                c.index,
                c.pid,
                quote(why)
            );
            let _ = kill(c.pid, Signal::SIGKILL);
            let _ = waitpid(c.pid, None);
            c.conn.deregister(registry);
        }
        self.children.clear();
    }

    /// Collects exited children; an unexpected exit is logged and the child re-forked later
    /// (`stopping`: every exit is expected).
    pub fn reap(&mut self, now: Instant, stopping: bool, registry: &Registry) {
        let mut k = 0;
        while k < self.children.len() {
            let pid = self.children[k].pid;
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    k += 1;
                    continue;
                }
                Ok(st) => st,
                Err(nix::errno::Errno::ECHILD) => WaitStatus::StillAlive,
                Err(_) => {
                    k += 1;
                    continue;
                }
            };
            let mut c = self.children.remove(k);
            c.conn.deregister(registry);
            // Take in what it sent last (its final metrics) before forgetting it.
            handle_messages(&mut c, &mut self.latency);
            if let Some(m) = &c.metrics {
                self.retired.absorb(&m.backends);
                self.access_log_dropped_gone += m.access_log_dropped;
                self.retry_budget_refused_gone += m.retry_budget_refused;
                self.queue_gone = self.queue_gone.plus(m.queue);
            }
            self.latency.forget_child(&c.pid.to_string());
            let how = match status {
                WaitStatus::Exited(_, code) => format!("exit {code}"),
                WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
                other => format!("{other:?}"),
            };
            if matches!(c.state, ChildState::Draining { .. }) || stopping {
                info!(
                    "lb_child_exited",
                    "lb={} pid={pid} status={}",
                    c.index,
                    quote(&how)
                );
            } else {
                warn!(
                    "lb_child_died",
                    "lb={} pid={pid} status={} action=refork",
                    c.index,
                    quote(&how)
                );
                self.note_death(&c, now);
            }
        }
    }

    /// An unexpected death: a child that died young is re-forked after a growing delay.
    fn note_death(&mut self, c: &LbChild, now: Instant) {
        self.restarts += 1;
        let young = now.duration_since(c.started) < YOUNG_DEATH;
        let entry = self.backoff.entry(c.index).or_insert((now, 0));
        if young {
            entry.1 += 1;
            let delay =
                (Duration::from_millis(100) * 2u32.pow(entry.1.min(6))).min(MAX_REFORK_DELAY);
            entry.0 = now + delay;
        } else {
            *entry = (now, 0);
        }
    }

    /// Readiness on a child's control socket (false: not a child's token).
    pub fn on_control(&mut self, ev: &mio::event::Event) -> bool {
        let Some(c) = self.children.iter_mut().find(|c| c.token == ev.token()) else {
            return false;
        };
        c.conn.note(ev);
        let _ = c.conn.flush();
        let got = handle_messages(c, &mut self.latency);
        if let Some(q) = got.demand {
            self.news.demand = Some(self.news.demand.unwrap_or(0).saturating_add(q));
        }
        self.news.metrics |= got.metrics;
        true
    }

    /// Demand signals and fresh reports since the previous call.
    pub fn take_news(&mut self) -> Received {
        std::mem::take(&mut self.news)
    }

    /// Requests queued for a worker, summed over live children (latest reports).
    pub fn queued(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| c.metrics.as_ref().map(|m| m.queued))
            .sum()
    }

    /// Requests in flight to the backends `active` accepts, summed over live children.
    pub fn in_flight(&self, active: &HashSet<String>) -> u64 {
        autoscale::active_in_flight(
            self.children
                .iter()
                .filter_map(|c| c.metrics.as_ref().map(|m| m.backends.as_slice())),
            |id| active.contains(id),
        )
    }

    /// p90 of the requests completed since the previous call.
    pub fn take_p90(&mut self) -> Option<f64> {
        self.latency.take_p90()
    }

    /// Per-backend figures: retired children plus every live child's latest report.
    pub fn backend_views(&self) -> BTreeMap<String, BackendView> {
        super::metrics::aggregate(
            &self.retired,
            self.children
                .iter()
                .filter_map(|c| c.metrics.as_ref().map(|m| m.backends.as_slice())),
        )
    }

    /// Children on a listener that changed, past the pool size, or needing a new loop
    /// (`replace_all`: mode) are marked retiring; `ensure_children` forks their successors.
    pub fn mark_retiring(&mut self, cfg: &Config, replace_all: bool) {
        let ids: Vec<u64> = self.listeners.iter().map(|l| l.id).collect();
        for c in &mut self.children {
            if c.state != ChildState::Running {
                continue;
            }
            let li = Self::listener_of(cfg, c.index);
            let on_right_listener = ids.get(li) == Some(&c.listener_id);
            if replace_all || c.index >= cfg.pool || !on_right_listener {
                c.retiring = true;
            }
        }
    }
}

/// Takes in what a child sent: acks, metrics reports, demand signals.
fn handle_messages(c: &mut LbChild, latency: &mut autoscale::LatencyWindow) -> Received {
    let now = Instant::now();
    let mut got = Received::default();
    for msg in c.conn.receive() {
        match msg {
            Ok(Up::Ack { seq, ok, error }) => {
                if !ok {
                    warn!(
                        "lb_control_rejected",
                        "lb={} seq={seq} error={}",
                        c.index,
                        quote(error.as_deref().unwrap_or(""))
                    );
                }
                c.acked_seq = c.acked_seq.max(seq);
            }
            Ok(Up::Metrics {
                connections,
                backends,
                access_log_dropped,
                queued,
                retry_budget_refused,
                queue,
            }) => {
                c.metrics_basis = c.acked_seq;
                latency.record(&c.pid.to_string(), &backends);
                c.metrics = Some(ChildMetrics {
                    connections,
                    backends,
                    access_log_dropped,
                    queued,
                    retry_budget_refused,
                    queue,
                });
                c.metrics_at = Some(now);
                got.metrics = true;
            }
            Ok(Up::Demand { queued }) => {
                got.demand = Some(got.demand.unwrap_or(0).saturating_add(queued));
            }
            Err(bad) => {
                c.bad_lines += 1;
                if c.bad_lines == 1 {
                    warn!(
                        "lb_control_bad_line",
                        "lb={} error={}",
                        c.index,
                        quote(&bad.error)
                    );
                }
            }
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::control::BackendMetrics;
    use std::os::unix::net::UnixStream;

    /// A pool with one child record over a socketpair (no fork): returns the child's end.
    fn pool_with_child() -> (LbPool, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let conn = ControlChannel::new(ours).expect("channel");
        let mut pool = LbPool::new(Vec::new());
        pool.children.push(LbChild {
            pid: nix::unistd::Pid::from_raw(i32::MAX),
            index: 0,
            listener_id: 0,
            name: "lb.0".into(),
            retiring: false,
            conn,
            token: mio::Token(99),
            state: ChildState::Running,
            started: Instant::now(),
            acked_seq: 0,
            metrics_basis: 0,
            metrics: None,
            metrics_at: None,
            bad_lines: 0,
        });
        (pool, theirs)
    }

    fn spec(id: &str, state: BackendState) -> BackendSpec {
        BackendSpec {
            id: id.into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            weight: 1,
            state,
        }
    }

    fn report(pool: &mut LbPool, acked: u64, in_flight: u64) {
        let c = &mut pool.children[0];
        c.acked_seq = acked;
        c.metrics_basis = acked;
        c.metrics = Some(ChildMetrics {
            connections: 0,
            access_log_dropped: 0,
            backends: vec![BackendMetrics {
                id: "w1".into(),
                in_flight,
                responses: [0; 5],
                failures: 0,
                healthy: true,
                latency: Vec::new(),
                latency_sum_ms: 0.0,
                ..BackendMetrics::default()
            }],
            queued: 0,
            retry_budget_refused: 0,
            queue: Default::default(),
        });
    }

    #[test]
    fn demand_signals_and_reports_are_news_until_taken() {
        use std::io::Write;
        let (mut pool, mut peer) = pool_with_child();
        peer.write_all(
            b"{\"type\":\"demand\",\"queued\":2}\n{\"type\":\"demand\",\"queued\":3}\n\
              {\"type\":\"metrics\",\"connections\":1,\"backends\":[]}\n",
        )
        .expect("write");
        let c = &mut pool.children[0];
        // The channel reads only after a readiness event.
        let mut poll = mio::Poll::new().expect("poll");
        c.conn.register(poll.registry(), c.token).expect("register");
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .expect("poll");
        for ev in events.iter() {
            c.conn.note(ev);
        }
        let got = handle_messages(c, &mut pool.latency);
        assert_eq!(
            got,
            Received {
                demand: Some(5),
                metrics: true
            }
        );
        // A report without `queued` (an older child) reads as 0 queued.
        assert_eq!(pool.queued(), 0);
        assert_eq!(pool.take_news(), Received::default());
    }

    #[test]
    fn an_unchanged_backend_set_is_not_sent_again() {
        let (mut pool, _peer) = pool_with_child();
        pool.publish_backends(vec![spec("w1", BackendState::Active)]);
        assert_eq!(pool.seq(), 1);
        pool.publish_backends(vec![spec("w1", BackendState::Active)]);
        assert_eq!(pool.seq(), 1, "same set: no new seq");
        pool.publish_backends(vec![spec("w1", BackendState::Draining)]);
        assert_eq!(pool.seq(), 2);
    }

    #[test]
    fn a_held_backend_set_is_not_replaced() {
        use std::io::Read;
        let (mut pool, mut peer) = pool_with_child();
        pool.publish_backends(vec![spec("w1", BackendState::Active)]);
        pool.hold_backends();
        pool.publish_backends(Vec::new());
        assert_eq!(pool.seq(), 1, "no set after the hold");
        assert_eq!(
            pool.children[0].conn.queued(),
            0,
            "nothing waits to be sent"
        );
        peer.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let _ = peer.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.lines().count(), 1, "one set sent: {text}");
        assert!(text.contains("\"w1\""), "the set before the hold: {text}");
    }

    #[test]
    fn drained_needs_the_drain_seq_applied_and_nothing_in_flight() {
        let (mut pool, _peer) = pool_with_child();
        assert!(pool.serving());
        report(&mut pool, 1, 0);
        assert!(
            !pool.drained("w1", 2),
            "the child has not applied seq 2 yet"
        );
        report(&mut pool, 2, 3);
        assert!(!pool.drained("w1", 2), "requests still in flight");
        report(&mut pool, 2, 0);
        assert!(pool.drained("w1", 2));
        assert_eq!(pool.in_flight(&HashSet::from(["w1".to_string()])), 0);
    }
}
