-- The kit's `bids` table read from a Kafka topic (bench/kafka.py fills it with the kit's
-- input): the same columns and watermark as the kit's src_file.sql. ${BOOTSTRAP} = the
-- broker, ${GROUP} = a consumer group of this run (its offsets tell the bench when all is read).
CREATE TABLE bids (
  auction   BIGINT,
  bidder    BIGINT,
  price     BIGINT,
  channel   TEXT,
  url       TEXT,
  date_time TIMESTAMP NOT NULL,
  extra     TEXT,
  WATERMARK FOR date_time AS date_time - INTERVAL '1 second'
) WITH (
  connector = 'kafka',
  type = 'source',
  bootstrap_servers = '${BOOTSTRAP}',
  topic = 'bids',
  format = 'json',
  'source.offset' = 'earliest',
  'source.group_id' = '${GROUP}'
);
