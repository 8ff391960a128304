//! The columns of Nexmark's three structs, written straight into one Arrow builder per field
//! (no allocation per row); a struct that is not the event's kind gets a NULL row.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBufferBuilder, Int64Array, StringArray, StringBuilder, StructArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::Fields;
use datafusion::arrow::error::ArrowError;

use super::model::*;

/// Appends text to the value being built (the value ends at the next `append_value`).
fn put(out: &mut StringBuilder, text: &str) {
    // Writing into a string builder cannot fail.
    let _ = out.write_str(text);
}

/// Appends `len` random letters and digits to the value being built, ten per random draw.
fn put_alphanumeric(out: &mut StringBuilder, rng: &mut Rng, len: usize) {
    let mut buf = [0u8; 60];
    let mut left = len;
    while left > 0 {
        let chunk = left.min(buf.len());
        for group in buf[..chunk].chunks_mut(10) {
            let mut x = rng.next_u64();
            for b in group {
                *b = ALPHANUMERIC[(x % 62) as usize];
                x /= 62;
            }
        }
        put(out, std::str::from_utf8(&buf[..chunk]).unwrap_or_default());
        left -= chunk;
    }
}

fn text_builder(rows: usize, bytes: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, bytes)
}

fn ints(values: Vec<i64>, nulls: &NullBuffer) -> ArrayRef {
    Arc::new(Int64Array::new(values.into(), Some(nulls.clone())))
}

fn times(values: Vec<i64>, nulls: &NullBuffer) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::new(
        values.into(),
        Some(nulls.clone()),
    ))
}

fn texts(mut builder: StringBuilder, nulls: &NullBuffer) -> ArrayRef {
    let (offsets, values, _) = builder.finish().into_parts();
    Arc::new(StringArray::new(offsets, values, Some(nulls.clone())))
}

/// A struct column whose children share its validity (field access then reads NULL where the
/// struct is NULL).
fn structure(
    fields: &Fields,
    mut valid: BooleanBufferBuilder,
    children: impl FnOnce(&NullBuffer) -> Vec<ArrayRef>,
) -> Result<ArrayRef, ArrowError> {
    let nulls = NullBuffer::new(valid.finish());
    let children = children(&nulls);
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        children,
        Some(nulls),
    )?))
}

/// Writes the URL of (non-hot) channel `channel`: the same for every bid through it.
fn put_channel_url(g: &Generator, out: &mut StringBuilder, channel: u64) {
    let mut rng = Rng::new(g.seed ^ CHANNEL_SALT, channel);
    put(out, "https://www.nexmark.com/");
    for part in 0..3 {
        if part > 0 {
            put(out, "/");
        }
        let len = string_length(&mut rng, 5);
        put_alphanumeric(out, &mut rng, len);
    }
    put(out, "/item.htm?query=1");
    if rng.below(10) > 0 {
        let _ = write!(out, "&channel_id={channel}");
    }
}
pub(super) struct PersonColumns {
    id: Vec<i64>,
    name: StringBuilder,
    email_address: StringBuilder,
    credit_card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    datetime: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl PersonColumns {
    pub(super) fn new(rows: usize) -> Self {
        let people = rows / TOTAL_PROPORTION as usize + 1;
        PersonColumns {
            id: Vec::with_capacity(rows),
            name: text_builder(rows, people * 12),
            email_address: text_builder(rows, people * 12),
            credit_card: text_builder(rows, people * 19),
            city: text_builder(rows, people * 8),
            state: text_builder(rows, people * 2),
            datetime: Vec::with_capacity(rows),
            extra: text_builder(rows, people * AVG_PERSON_BYTES),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    pub(super) fn push(&mut self, n: u64, time: i64, rng: &mut Rng) {
        self.id.push(FIRST_PERSON_ID + last_person(n) as i64);

        let (first, last) = (rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
        put(&mut self.name, first);
        put(&mut self.name, " ");
        self.name.append_value(last);

        let (user, domain) = (string_length(rng, 7), string_length(rng, 5));
        put_alphanumeric(&mut self.email_address, rng, user);
        put(&mut self.email_address, "@");
        put_alphanumeric(&mut self.email_address, rng, domain);
        self.email_address.append_value(".com");

        // Four groups of four digits from one draw.
        let mut digits = rng.below(10_000_000_000_000_000);
        let mut card = [b' '; 19];
        for i in (0..19).rev().filter(|i| i % 5 != 4) {
            card[i] = b'0' + (digits % 10) as u8;
            digits /= 10;
        }
        self.credit_card
            .append_value(std::str::from_utf8(&card).unwrap_or_default());

        let (city, state) = (rng.pick(&US_CITIES), rng.pick(&US_STATES));
        self.city.append_value(city);
        self.state.append_value(state);
        self.datetime.push(time);

        let size = 8 + first.len() + 1 + last.len() + user + domain + 5 + 19 + city.len() + 2;
        let extra = extra_length(rng, size, AVG_PERSON_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    pub(super) fn push_null(&mut self) {
        self.id.push(0);
        for b in [
            &mut self.name,
            &mut self.email_address,
            &mut self.credit_card,
            &mut self.city,
            &mut self.state,
            &mut self.extra,
        ] {
            b.append_value("");
        }
        self.datetime.push(0);
        self.valid.append(false);
    }

    pub(super) fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.id, nulls),
                texts(self.name, nulls),
                texts(self.email_address, nulls),
                texts(self.credit_card, nulls),
                texts(self.city, nulls),
                texts(self.state, nulls),
                times(self.datetime, nulls),
                texts(self.extra, nulls),
            ]
        })
    }
}

pub(super) struct AuctionColumns {
    id: Vec<i64>,
    description: StringBuilder,
    item_name: StringBuilder,
    initial_bid: Vec<i64>,
    reserve: Vec<i64>,
    datetime: Vec<i64>,
    expires: Vec<i64>,
    seller: Vec<i64>,
    category: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl AuctionColumns {
    pub(super) fn new(rows: usize) -> Self {
        let auctions = rows * AUCTION_PROPORTION as usize / TOTAL_PROPORTION as usize + 1;
        AuctionColumns {
            id: Vec::with_capacity(rows),
            description: text_builder(rows, auctions * 52),
            item_name: text_builder(rows, auctions * 12),
            initial_bid: Vec::with_capacity(rows),
            reserve: Vec::with_capacity(rows),
            datetime: Vec::with_capacity(rows),
            expires: Vec::with_capacity(rows),
            seller: Vec::with_capacity(rows),
            category: Vec::with_capacity(rows),
            extra: text_builder(rows, auctions * AVG_AUCTION_BYTES),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    pub(super) fn push(&mut self, g: &Generator, n: u64, time: i64, rng: &mut Rng) {
        self.id.push(FIRST_AUCTION_ID + last_auction(n) as i64);

        let seller = if rng.below(HOT_SELLER_ODDS) > 0 {
            last_person(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_person(n, rng)
        };
        self.seller.push(FIRST_PERSON_ID + seller as i64);
        self.category
            .push(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
        let initial_bid = random_price(rng);
        self.initial_bid.push(initial_bid);
        self.reserve.push(initial_bid + random_price(rng));
        self.datetime.push(time);

        // Auctions last twice, on average, the time it takes to open the in-flight number.
        let horizon = (NUM_INFLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION)
            .saturating_mul(g.delay as u64);
        let length = 1 + rng
            .below(horizon.saturating_mul(2).saturating_add(1))
            .max(1);
        self.expires
            .push(time.saturating_add(length.min(i64::MAX as u64) as i64));

        let name = string_length(rng, 20);
        put_alphanumeric(&mut self.item_name, rng, name);
        self.item_name.append_value("");
        let description = string_length(rng, 100);
        put_alphanumeric(&mut self.description, rng, description);
        self.description.append_value("");

        let size = 8 + name + description + 8 + 8 + 8 + 8 + 8;
        let extra = extra_length(rng, size, AVG_AUCTION_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    pub(super) fn push_null(&mut self) {
        for v in [
            &mut self.id,
            &mut self.initial_bid,
            &mut self.reserve,
            &mut self.datetime,
            &mut self.expires,
            &mut self.seller,
            &mut self.category,
        ] {
            v.push(0);
        }
        for b in [&mut self.description, &mut self.item_name, &mut self.extra] {
            b.append_value("");
        }
        self.valid.append(false);
    }

    pub(super) fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.id, nulls),
                texts(self.description, nulls),
                texts(self.item_name, nulls),
                ints(self.initial_bid, nulls),
                ints(self.reserve, nulls),
                times(self.datetime, nulls),
                times(self.expires, nulls),
                ints(self.seller, nulls),
                ints(self.category, nulls),
                texts(self.extra, nulls),
            ]
        })
    }
}

pub(super) struct BidColumns {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: StringBuilder,
    url: StringBuilder,
    datetime: Vec<i64>,
    extra: StringBuilder,
    valid: BooleanBufferBuilder,
}

impl BidColumns {
    pub(super) fn new(rows: usize) -> Self {
        BidColumns {
            auction: Vec::with_capacity(rows),
            bidder: Vec::with_capacity(rows),
            price: Vec::with_capacity(rows),
            channel: text_builder(rows, rows * 10),
            url: text_builder(rows, rows * 62),
            datetime: Vec::with_capacity(rows),
            extra: text_builder(rows, rows * (AVG_BID_BYTES - 30)),
            valid: BooleanBufferBuilder::new(rows),
        }
    }

    pub(super) fn push(&mut self, g: &Generator, n: u64, time: i64, rng: &mut Rng) {
        let auction = if rng.below(HOT_AUCTION_ODDS) > 0 {
            last_auction(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_auction(n, rng)
        };
        self.auction.push(FIRST_AUCTION_ID + auction as i64);
        let bidder = if rng.below(HOT_BIDDER_ODDS) > 0 {
            last_person(n) / HOT_BUCKET * HOT_BUCKET
        } else {
            random_person(n, rng)
        };
        self.bidder.push(FIRST_PERSON_ID + bidder as i64);
        self.price.push(random_price(rng));

        if rng.below(HOT_CHANNEL_ODDS) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            self.channel.append_value(HOT_CHANNELS[i]);
            self.url.append_value(HOT_URLS[i]);
        } else {
            let channel = rng.below(NUM_CHANNELS);
            let _ = write!(self.channel, "channel-{channel}");
            self.channel.append_value("");
            put_channel_url(g, &mut self.url, channel);
            self.url.append_value("");
        }
        self.datetime.push(time);

        let extra = extra_length(rng, 32, AVG_BID_BYTES);
        put_alphanumeric(&mut self.extra, rng, extra);
        self.extra.append_value("");
        self.valid.append(true);
    }

    pub(super) fn push_null(&mut self) {
        for v in [
            &mut self.auction,
            &mut self.bidder,
            &mut self.price,
            &mut self.datetime,
        ] {
            v.push(0);
        }
        for b in [&mut self.channel, &mut self.url, &mut self.extra] {
            b.append_value("");
        }
        self.valid.append(false);
    }

    pub(super) fn finish(self, fields: &Fields) -> Result<ArrayRef, ArrowError> {
        structure(fields, self.valid, |nulls| {
            vec![
                ints(self.auction, nulls),
                ints(self.bidder, nulls),
                ints(self.price, nulls),
                texts(self.channel, nulls),
                texts(self.url, nulls),
                times(self.datetime, nulls),
                texts(self.extra, nulls),
            ]
        })
    }
}
