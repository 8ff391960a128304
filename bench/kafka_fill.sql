-- Copies the kit's `bids` (its src_file.sql, read from ${INPUT}) into topic `bids` at
-- ${BOOTSTRAP}, batched by librdkafka.
CREATE TABLE topic WITH (
  connector = 'kafka',
  type = 'sink',
  bootstrap_servers = '${BOOTSTRAP}',
  topic = 'bids',
  format = 'json',
  client_configs = 'linger.ms=20,batch.size=1000000'
);
INSERT INTO topic SELECT * FROM bids;
