//! Nexmark's model of an auction site, with the reference generator's default settings: which
//! kind event `n` is, which people and auctions it refers to, and the random draws of its
//! fields (a counter-based generator seeded per event, so any event can be made on its own).

pub(super) const PERSON_PROPORTION: u64 = 1;
pub(super) const AUCTION_PROPORTION: u64 = 3;
pub(super) const TOTAL_PROPORTION: u64 = 50;
pub(super) const FIRST_PERSON_ID: i64 = 1000;
pub(super) const FIRST_AUCTION_ID: i64 = 1000;
pub(super) const FIRST_CATEGORY_ID: i64 = 10;
pub(super) const NUM_CATEGORIES: u64 = 5;
/// How far past the newest person a random person id may reach.
pub(super) const PERSON_ID_LEAD: u64 = 10;
/// How far past the newest auction a random auction id may reach.
pub(super) const AUCTION_ID_LEAD: u64 = 10;
/// Random auctions are among this many recent ones.
pub(super) const NUM_INFLIGHT_AUCTIONS: u64 = 100;
/// Random people are among this many recent ones.
pub(super) const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// A hot id is the newest id rounded down to a multiple of this.
pub(super) const HOT_BUCKET: u64 = 100;
/// A bid is for a hot auction unless a draw in `0..HOT_AUCTION_ODDS` is 0.
pub(super) const HOT_AUCTION_ODDS: u64 = 2;
/// A bid is by a hot bidder unless a draw in `0..HOT_BIDDER_ODDS` is 0.
pub(super) const HOT_BIDDER_ODDS: u64 = 4;
/// An auction is by a hot seller unless a draw in `0..HOT_SELLER_ODDS` is 0.
pub(super) const HOT_SELLER_ODDS: u64 = 4;
/// A bid comes through a hot channel unless a draw in `0..HOT_CHANNEL_ODDS` is 0.
pub(super) const HOT_CHANNEL_ODDS: u64 = 2;
/// How many other channels there are.
pub(super) const NUM_CHANNELS: u64 = 10_000;
/// Average sizes in bytes, reached by padding with `extra`.
pub(super) const AVG_PERSON_BYTES: usize = 200;
pub(super) const AVG_AUCTION_BYTES: usize = 500;
pub(super) const AVG_BID_BYTES: usize = 100;
/// Shortest random string.
pub(super) const MIN_STRING_LENGTH: u64 = 3;

pub(super) const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
pub(super) const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
pub(super) const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
pub(super) const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
pub(super) const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
pub(super) const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/abo/eoci/cidro/item.htm?query=1",
    "https://www.nexmark.com/eoax/oad/cidro/item.htm?query=1",
    "https://www.nexmark.com/abo/jack/cidro/item.htm?query=1",
    "https://www.nexmark.com/abo/micah/cidro/item.htm?query=1",
];
pub(super) const ALPHANUMERIC: &[u8; 62] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Salts that keep the random streams of events and channels apart.
pub(super) const SEED_SALT: u64 = 0x6e65_786d_6172_6b00;
pub(super) const CHANNEL_SALT: u64 = 0x6368_616e_6e65_6c00;

/// A small counter-based random generator (SplitMix64): cheap to seed once per event.
pub(super) struct Rng(u64);

/// SplitMix64's output function: a bijection that scatters nearby inputs.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream of item `n` under `seed`; distinct items start far apart.
    pub(super) fn new(seed: u64, n: u64) -> Rng {
        Rng(mix(seed ^ mix(n.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Person,
    Auction,
    Bid,
}

pub(super) fn kind(n: u64) -> Kind {
    match n % TOTAL_PROPORTION {
        r if r < PERSON_PROPORTION => Kind::Person,
        r if r < PERSON_PROPORTION + AUCTION_PROPORTION => Kind::Auction,
        _ => Kind::Bid,
    }
}

/// The 0-based id of the newest person at event `n` (its own id if it is a person).
pub(super) fn last_person(n: u64) -> u64 {
    let (epoch, offset) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    // Past the epoch's people, the newest is its last one.
    let person = if offset < PERSON_PROPORTION {
        offset
    } else {
        PERSON_PROPORTION - 1
    };
    epoch * PERSON_PROPORTION + person
}

/// The 0-based id of the newest auction at event `n` (its own id if it is an auction).
pub(super) fn last_auction(n: u64) -> u64 {
    let (epoch, offset) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    if offset < PERSON_PROPORTION {
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    } else {
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    }
}

/// A 0-based person id among the recently active, possibly a little ahead of the newest.
pub(super) fn random_person(n: u64, rng: &mut Rng) -> u64 {
    let newest = last_person(n);
    let active = newest.min(NUM_ACTIVE_PEOPLE);
    newest - active + rng.below(active + PERSON_ID_LEAD)
}

/// A 0-based auction id among those in flight, possibly a little ahead of the newest.
pub(super) fn random_auction(n: u64, rng: &mut Rng) -> u64 {
    let newest = last_auction(n);
    rng.range(
        newest.saturating_sub(NUM_INFLIGHT_AUCTIONS),
        newest + 1 + AUCTION_ID_LEAD,
    )
}

/// A price in cents, log-uniform between 1 and 1,000,000 dollars.
pub(super) fn random_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// The length of a random string shorter than `max`.
pub(super) fn string_length(rng: &mut Rng, max: u64) -> usize {
    rng.range(MIN_STRING_LENGTH, max) as usize
}

/// The length of the padding that brings a record of `size` bytes to about `average` (±20%).
pub(super) fn extra_length(rng: &mut Rng, size: usize, average: usize) -> usize {
    if size > average {
        return 0;
    }
    let wanted = average - size;
    let delta = (wanted as f64 * 0.2).round() as usize;
    if delta == 0 {
        wanted
    } else {
        wanted - delta + rng.below(2 * delta as u64) as usize
    }
}

/// What a subtask's events are made from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Generator {
    /// Event time of event 0, nanoseconds since the epoch.
    pub(super) first_time: i64,
    /// Nanoseconds between two events.
    pub(super) delay: i64,
    pub(super) seed: u64,
}

impl Generator {
    pub(super) fn new(first_time: i64, delay: i64) -> Self {
        Generator {
            first_time,
            delay,
            seed: mix(first_time as u64 ^ SEED_SALT),
        }
    }

    pub(super) fn time(&self, n: u64) -> i64 {
        self.first_time
            .saturating_add((n as i64).saturating_mul(self.delay))
    }
}
