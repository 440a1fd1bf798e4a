-- The durable message queue (see engine/src/store/mod.rs for the model).

CREATE TABLE messages (
    -- Enqueue order. Enqueues with an ordering key take a per-key advisory lock, so within a key
    -- the order of these numbers is also the order of commits.
    seq                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                     UUID        NOT NULL UNIQUE,
    route_id               TEXT        NOT NULL,
    ordering_key           TEXT,
    idempotency_key        TEXT,
    request_hash           TEXT,
    state                  TEXT        NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'delivered', 'dead', 'discarded')),
    received_at            TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    next_attempt_at        TIMESTAMPTZ NOT NULL,
    finished_at            TIMESTAMPTZ,
    lease_owner            TEXT,
    lease_token            UUID,
    lease_until            TIMESTAMPTZ,
    attempts               INTEGER     NOT NULL DEFAULT 0,
    attempts_since_requeue INTEGER     NOT NULL DEFAULT 0,
    last_error_class       TEXT,
    last_error_text        TEXT,
    discard_reason         TEXT,
    -- Bodies; NULL once purged by retention.
    payload_type           TEXT        NOT NULL,
    payload                BYTEA,
    original_type          TEXT,
    original               BYTEA,
    last_request_type      TEXT,
    last_request           BYTEA,
    answer                 JSONB,
    purged_at              TIMESTAMPTZ
);

-- One message per route and idempotency key.
CREATE UNIQUE INDEX messages_idempotency ON messages (route_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Claiming: due pending messages, oldest due first.
CREATE INDEX messages_due ON messages (next_attempt_at, seq) WHERE state = 'pending';

-- The ordering-key rule: unfinished messages per route and key.
CREATE INDEX messages_unfinished_key ON messages (route_id, ordering_key, seq)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'dead');

-- Dead-letter listing and requeue.
CREATE INDEX messages_dead ON messages (route_id, seq) WHERE state = 'dead';

-- Retention.
CREATE INDEX messages_purgeable ON messages (finished_at)
    WHERE state IN ('delivered', 'discarded') AND purged_at IS NULL;

CREATE TABLE attempts (
    message_seq  BIGINT      NOT NULL REFERENCES messages (seq),
    number       INTEGER     NOT NULL,
    worker_id    TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  BIGINT      NOT NULL,
    outcome      TEXT        NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead_letter')),
    retry_at     TIMESTAMPTZ,
    error_class  TEXT,
    error_text   TEXT,
    PRIMARY KEY (message_seq, number)
);
