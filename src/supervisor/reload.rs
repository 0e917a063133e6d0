//! SIGHUP: re-read and validate the config, then apply the difference without closing a
//! listener: worker count (drain before stop), settings to the children, replacement children
//! on the same listeners where a setting needs a new loop.

use std::time::Instant;

use super::{LbListener, Supervisor, addr_list, bind_listener, lb_addrs};
use crate::config::Config;
use crate::sys::log::quote;
use crate::sys::notify;
use crate::{error, info, warn};

/// Top-level keys whose value differs between two configs (YAML names).
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    b.iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

impl Supervisor {
    /// Handles SIGHUP. An invalid config changes nothing.
    pub(super) fn reload(&mut self) {
        notify::reloading();
        info!(
            "reload_started",
            "config={}",
            quote(&self.config_path.display().to_string())
        );
        match self.try_reload() {
            Ok(changed) => {
                self.reloads += 1;
                self.last_reload_error = None;
                info!(
                    "reloaded",
                    "changed={} workers={} pool={}",
                    quote(&changed.join(",")),
                    self.fleet.desired(),
                    self.cfg.pool
                );
            }
            Err(e) => {
                error!(
                    "reload_rejected",
                    "error={} action=\"keep running unchanged\"",
                    quote(&e)
                );
                self.last_reload_error = Some(e);
            }
        }
        notify::ready(&self.status_line());
    }

    fn try_reload(&mut self) -> Result<Vec<String>, String> {
        let mut new = crate::config::load(&self.config_path).map_err(|e| e.to_string())?;
        keep_restart_only_keys(&self.cfg, &mut new);
        if new.avg_delay != self.cfg.avg_delay || new.failure != self.cfg.failure {
            info!(
                "reload_worker_settings",
                "avg_delay={} failure={} applies_to=\"workers started from now on\"",
                new.avg_delay,
                new.failure
            );
        }
        self.swap_listeners(&new)?;

        let changed = changed_keys(&self.cfg, &new);
        let replace_all = new.proxy.mode != self.cfg.proxy.mode;
        let settings_changed = new.proxy != self.cfg.proxy;
        let worker_changed = new.worker != self.cfg.worker;
        self.cfg = new;
        let now = Instant::now();
        self.fleet.reconfigure(super::fleet_settings(&self.cfg));
        if let Some(d) = self.driver.as_deref_mut() {
            d.reconfigure(&super::fleet_settings(&self.cfg).launch_spec(), now);
        }
        self.apply_worker_count(worker_changed, now);
        self.pool.mark_retiring(&self.cfg, replace_all);
        if settings_changed && !replace_all {
            self.pool.publish_settings(&self.cfg.proxy);
        }
        self.ensure_children(now);
        self.drive_fleet(now);
        Ok(changed)
    }

    /// Listeners: keeps every socket whose address stays and binds the new ones first; a bind
    /// error puts everything back and rejects the whole reload before anything changed.
    fn swap_listeners(&mut self, new: &Config) -> Result<(), String> {
        let addrs = lb_addrs(new)?;
        let order: Vec<u64> = self.pool.listeners.iter().map(|l| l.id).collect();
        let first_new_id = self.pool.next_listener_id;
        let mut old_listeners = std::mem::take(&mut self.pool.listeners);
        let mut next: Vec<LbListener> = Vec::new();
        for addr in addrs {
            if let Some(k) = old_listeners.iter().position(|l| l.addr == addr) {
                next.push(old_listeners.remove(k));
                continue;
            }
            match bind_listener(addr) {
                Ok(socket) => {
                    let id = self.pool.next_listener_id;
                    self.pool.next_listener_id += 1;
                    next.push(LbListener { id, addr, socket });
                }
                Err(e) => {
                    // Put everything back as it was (the new sockets close here).
                    old_listeners.extend(next.into_iter().filter(|l| l.id < first_new_id));
                    old_listeners.sort_by_key(|l| {
                        order
                            .iter()
                            .position(|&id| id == l.id)
                            .unwrap_or(usize::MAX)
                    });
                    self.pool.listeners = old_listeners;
                    return Err(e);
                }
            }
        }
        if !old_listeners.is_empty() {
            info!("listeners_closed", "addrs={}", addr_list(&old_listeners));
        }
        // Dropping our copies: children still serving them keep theirs until they drain.
        drop(old_listeners);
        self.pool.listeners = next;
        Ok(())
    }

    /// The autoscaler takes the new config; a changed `worker` count wins over its target
    /// (clamped to [min, max] when autoscaling).
    fn apply_worker_count(&mut self, worker_changed: bool, now: Instant) {
        self.scaler.reconfigure(&self.cfg.autoscale);
        if worker_changed {
            self.scaler.set_desired(now, self.cfg.worker);
            self.fleet.set_desired(self.cfg.worker, now);
        }
        if self.cfg.autoscale.enabled {
            let (min, max) = (
                self.cfg.autoscale.min,
                self.cfg.autoscale.max.max(self.cfg.autoscale.min),
            );
            let clamped = self.fleet.desired().clamp(min, max);
            if clamped != self.fleet.desired() {
                self.scaler.set_desired(now, clamped);
                self.fleet.set_desired(clamped, now);
            }
        }
    }
}

/// Keys the running processes cannot take without a restart keep their running values in
/// `new` (logged once, listing them).
fn keep_restart_only_keys(old: &Config, new: &mut Config) {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($field:ident, $key:literal) => {
            if new.$field != old.$field {
                kept.push($key);
                new.$field = old.$field.clone();
            }
        };
    }
    keep!(instance, "instance");
    keep!(runtime, "runtime");
    keep!(stats_dir, "stats-dir");
    keep!(worker_address, "worker-address");
    keep!(worker_port, "worker-port");
    keep!(admin_address, "admin-address");
    keep!(admin_port, "admin-port");
    keep!(user, "user");
    if !kept.is_empty() {
        warn!(
            "reload_needs_restart",
            "keys={} action=\"kept the running values; restart to change them\"",
            kept.join(",")
        );
    }
}
