//! The admin JSON API (being written): messages, dead letters, requeue, discard.

use axum::Router;

use crate::store::Store;

/// The admin API's router.
pub fn router(_store: Store) -> Router {
    Router::new()
}
