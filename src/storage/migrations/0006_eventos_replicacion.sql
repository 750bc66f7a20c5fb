-- Replication changes go to the same table as failovers: `evento` says
-- which (`failover`, `degradada`: synchronous replication switched off,
-- `sincrona`: switched back on) and `detalle` explains it.

ALTER TABLE eventos_failover ADD COLUMN IF NOT EXISTS evento text NOT NULL DEFAULT 'failover';
ALTER TABLE eventos_failover ADD COLUMN IF NOT EXISTS detalle text;
