//! A running tilts: the HTTP ingress, the store, the delivery workers, the admin API and the
//! retention task, started together and stopped together.
//!
//! `tilts serve` and the in-process tests and benchmarks all start tilts through [`start`], so
//! what is tested is what runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::plan::Plan;
use crate::store::Store;
use crate::worker::{self, WorkerOptions};

/// What to override from the route file when starting.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Ingress address (`server.listen` otherwise).
    pub listen: Option<String>,
    /// Admin API address (`server.admin_listen` otherwise).
    pub admin_listen: Option<String>,
    /// Store URL (`server.database` otherwise).
    pub database: Option<String>,
    /// Worker settings (defaults from `server.workers` otherwise).
    pub workers: Option<WorkerOptions>,
    /// Start no delivery workers (an ingress-only process).
    pub no_workers: bool,
}

/// A running tilts.
pub struct Running {
    /// Where the ingress listens.
    pub addr: SocketAddr,
    /// Where the admin API listens (when a store is open).
    pub admin_addr: Option<SocketAddr>,
    /// The store, when one is open.
    pub store: Option<Store>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// Opens the store when a route needs one (or a database is named), binds the listeners and
/// starts the server, the workers and the retention task.
pub async fn start(plan: Plan, opts: StartOptions) -> anyhow::Result<Running> {
    let plan = Arc::new(plan);
    let store = if plan.has_queued_routes() || opts.database.is_some() {
        let url = opts
            .database
            .clone()
            .unwrap_or_else(|| plan.settings.database.clone());
        prepare_sqlite_dir(&url)?;
        let store = Store::open(&url)
            .await
            .with_context(|| format!("opening the store ({})", redact_url(&url)))?;
        tracing::info!(backend = store.backend(), url = %redact_url(&url), "store open");
        Some(store)
    } else {
        None
    };
    let listen = opts
        .listen
        .clone()
        .unwrap_or_else(|| plan.settings.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let mut admin_addr = None;
    if let Some(store) = &store {
        let admin_listen = opts
            .admin_listen
            .clone()
            .unwrap_or_else(|| plan.settings.admin_listen.clone());
        let admin_listener = tokio::net::TcpListener::bind(&admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (admin API)"))?;
        admin_addr = Some(admin_listener.local_addr()?);
        let router = crate::admin::router(store.clone());
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(admin_listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
        if !opts.no_workers {
            let wopts = opts.workers.clone().unwrap_or_else(|| WorkerOptions {
                concurrency: plan.settings.workers as usize,
                lease: plan.settings.lease.0,
                ..WorkerOptions::default()
            });
            tasks.push(tokio::spawn(worker::run(
                store.clone(),
                plan.clone(),
                wopts,
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(retention(
            store.clone(),
            plan.settings.retention.0,
            stop_rx.clone(),
        )));
    }

    tasks.push(tokio::spawn(crate::catalogue::run(
        plan.clone(),
        stop_rx.clone(),
    )));
    // RabbitMQ sources run through the same ingress code as HTTP requests.
    let (_, consumer_state) = crate::server::app(plan.clone(), store.clone());
    tasks.extend(crate::amqp_ingress::spawn(
        &plan,
        consumer_state.clone(),
        stop_rx.clone(),
    ));
    // Timer routes are queued, so there is a store.
    if let Some(store) = &store {
        tasks.extend(crate::timer::spawn(
            &plan,
            consumer_state,
            store.clone(),
            stop_rx.clone(),
        ));
    }

    let mut rx = stop_rx.clone();
    let server = tokio::spawn(crate::server::serve(
        plan.clone(),
        store.clone(),
        listener,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Ok(Running {
        addr,
        admin_addr,
        store,
        stop,
        tasks,
        server,
    })
}

impl Running {
    /// Stops taking requests, lets in-flight requests and deliveries finish, then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Ok(Err(e)) = self.server.await {
            tracing::error!(error = %e, "server stopped with an error");
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(store) = self.store {
            store.close().await;
        }
    }
}

/// Purges the payloads of delivered messages older than `keep`, at start and then hourly.
async fn retention(store: Store, keep: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let now = chrono::Utc::now();
        let before = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
        match store.purge_payloads(before, now).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "purged payloads of delivered messages"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention: cannot purge payloads now"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Creates the folder of an SQLite database file so the embedded default works on a fresh machine.
fn prepare_sqlite_dir(url: &str) -> anyhow::Result<()> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(());
    }
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Store URLs are shown with the password masked (the one URL redactor of the project).
pub use tilts_adapters::redact::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
