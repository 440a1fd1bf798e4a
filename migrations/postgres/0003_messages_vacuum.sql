-- Workers claim through the partial index messages_due (state = 'pending'). A delivered
-- message leaves a dead index entry behind until VACUUM removes it, and claims walk past those
-- entries: during a large backlog the claim cost grew with every delivered message (96 µs of
-- PostgreSQL CPU per message draining 50,000, 206 µs draining 350,000). Vacuum this table
-- after ~2% of it changed instead of the default 20%, without the cost-based pauses.
ALTER TABLE messages SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);
