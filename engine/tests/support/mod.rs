//! Shared fixtures of the engine's integration tests: a store in a fresh SQLite file, or in a
//! schema of its own in `TILTS_TEST_DATABASE_URL` (skipped when the variable is unset, failing
//! when it is set and the database is unreachable).

#![allow(dead_code)] // each test binary uses part of this module

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tilts_engine::store::Store;

/// Runs `case` with the URL of a fresh SQLite file.
pub async fn with_sqlite_url<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    case(format!(
        "sqlite://{}",
        dir.path().join("store.db").display()
    ))
    .await;
}

/// Runs `case` with the URL of a schema of its own in `TILTS_TEST_DATABASE_URL`, and drops the
/// schema afterwards, also when the case fails.
pub async fn with_postgres_url<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(url) = std::env::var("TILTS_TEST_DATABASE_URL") else {
        eprintln!("skipped: TILTS_TEST_DATABASE_URL is not set");
        return;
    };
    use sqlx::Executor;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("TILTS_TEST_DATABASE_URL is set but the database is unreachable: {e}")
        });
    let schema = format!("tilts_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store_url = format!("{url}{sep}options[search_path]={schema}");
    // Caught here rather than by a spawned task, so a case's future need not be `Send`.
    let outcome = std::panic::AssertUnwindSafe(case(store_url))
        .catch_unwind()
        .await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .unwrap();
    admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `case` on a store in a fresh SQLite file.
pub async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_sqlite_url(async |url| with_store(&url, case).await).await;
}

/// Runs `case` on a store in a schema of its own in `TILTS_TEST_DATABASE_URL`.
pub async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_url(async |url| with_store(&url, case).await).await;
}

async fn with_store<F, Fut>(url: &str, case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = Store::open(url)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store: {e}"));
    let outcome = std::panic::AssertUnwindSafe(case(store.clone()))
        .catch_unwind()
        .await;
    store.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Generates one test per case and backend: `sqlite::case` and `postgres::case`, each calling
/// `on_sqlite(case)` / `on_postgres(case)` of the test file.
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_sqlite(super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_postgres(super::$case).await;
                }
            )*
        }
    };
}
