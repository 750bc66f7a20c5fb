-- Failovers, recorded by the storage manager when it switches writes to a
-- promoted node and by the failover tool.

CREATE TABLE IF NOT EXISTS eventos_failover (
    id             serial PRIMARY KEY,
    momento        timestamptz NOT NULL DEFAULT now(),
    nodo_anterior  text,
    nodo_nuevo     text NOT NULL,
    timeline       integer
);
