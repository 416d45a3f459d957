"""Market spread: reject orders for symbols whose market is too wide.

Two TCP sources are merged and partitioned by stock symbol:

* "Market Data": NBBO quotes (national best bid and offer). A quote updates the
  symbol's stored bid and offer and emits nothing.
* "Orders": orders to buy or sell. An order is rejected when the symbol's
  stored spread (offer - bid) is at least 0.05, or at least 5% of the mid price
  ((bid + offer) / 2), or when no quote has been seen for the symbol yet. A
  rejected order is emitted as an order result; accepted orders emit nothing.

All integers and floats are big-endian; every frame starts with a u32 length
of the payload that follows. Symbols are 4 ASCII bytes, right-padded with
spaces; accounts are 6 ASCII bytes.

Market data payload, 29 bytes, ``struct ">B4sQdd"``:
    msg type (1) | symbol | transact time (u64, ms since epoch) | bid (f64) | offer (f64)

Order payload, 40 bytes, ``struct ">BI6s4sBddQ"``:
    msg type (2) | order id (u32) | account | symbol | side (u8: 1 buy, 2 sell)
    | quantity (f64) | price (f64) | transact time (u64, ms since epoch)

Order result (the sink output) payload, 55 bytes, ``struct ">BI6s4sddddQ"``:
    side | order id | account | symbol | quantity | price | bid | offer
    | the order's transact time

A frame whose msg type is wrong for its source is dropped.

Run it (see README.md)::

    wallaroo-run --application-module market_spread \\
        --in 'Market Data@127.0.0.1:7010,Orders@127.0.0.1:7011' --out 127.0.0.1:7002
"""
import struct

import wallaroo

MARKET_DATA_TYPE = 1
ORDER_TYPE = 2
MARKET_DATA = struct.Struct(">B4sQdd")
ORDER = struct.Struct(">BI6s4sBddQ")
ORDER_RESULT = struct.Struct(">BI6s4sddddQ")

MAX_SPREAD = 0.05           # absolute, in price units
MAX_SPREAD_RATIO = 0.05     # relative to the mid price


def application_setup(args):
    addresses = {name: (host, port) for name, host, port in wallaroo.tcp_parse_input_addrs(args)}
    market_host, market_port = addresses["Market Data"]
    orders_host, orders_port = addresses["Orders"]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    market_data = wallaroo.source(
        "Market Data",
        wallaroo.TCPSourceConfig("Market Data", market_host, market_port, decode_market_data))
    orders = wallaroo.source(
        "Orders",
        wallaroo.TCPSourceConfig("Orders", orders_host, orders_port, decode_order))

    pipeline = (market_data
                .merge(orders)
                .key_by(extract_symbol)
                .to(check_order)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_order_result)))

    return wallaroo.build_application("Market Spread", pipeline)


class MarketData(object):
    def __init__(self, symbol, transact_time, bid, offer):
        self.symbol = symbol
        self.transact_time = transact_time
        self.bid = bid
        self.offer = offer

    def __repr__(self):
        return "MarketData({!r}, {!r}, {!r}, {!r})".format(
            self.symbol, self.transact_time, self.bid, self.offer)


class Order(object):
    def __init__(self, order_id, account, symbol, side, quantity, price, transact_time):
        self.order_id = order_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.quantity = quantity
        self.price = price
        self.transact_time = transact_time

    def __repr__(self):
        return "Order({!r}, {!r}, {!r}, {!r}, {!r}, {!r}, {!r})".format(
            self.order_id, self.account, self.symbol, self.side,
            self.quantity, self.price, self.transact_time)


class OrderResult(object):
    """A rejected order, with the market it was rejected against."""

    def __init__(self, order, bid, offer):
        self.order = order
        self.bid = bid
        self.offer = offer

    def __repr__(self):
        return "OrderResult({!r}, bid={!r}, offer={!r})".format(self.order, self.bid, self.offer)


class SymbolData(object):
    """The last quote seen for one symbol (one instance per symbol)."""

    def __init__(self):
        self.last_bid = 0.0
        self.last_offer = 0.0
        self.should_reject_trades = True   # until a quote arrives

    def update(self, bid, offer):
        spread = offer - bid
        mid = (bid + offer) / 2.0
        self.last_bid = bid
        self.last_offer = offer
        self.should_reject_trades = spread >= MAX_SPREAD or spread >= mid * MAX_SPREAD_RATIO


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_market_data(payload):
    if len(payload) != MARKET_DATA.size or payload[0] != MARKET_DATA_TYPE:
        return None
    _, symbol, transact_time, bid, offer = MARKET_DATA.unpack(payload)
    return MarketData(symbol.decode("ascii").rstrip(), transact_time, bid, offer)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_order(payload):
    if len(payload) != ORDER.size or payload[0] != ORDER_TYPE:
        return None
    _, order_id, account, symbol, side, quantity, price, transact_time = ORDER.unpack(payload)
    return Order(order_id, account.decode("ascii"), symbol.decode("ascii").rstrip(),
                 side, quantity, price, transact_time)


@wallaroo.key_extractor
def extract_symbol(message):
    return message.symbol


@wallaroo.state_computation(name="check order", state=SymbolData)
def check_order(message, symbol_data):
    if isinstance(message, MarketData):
        symbol_data.update(message.bid, message.offer)
        return None
    if symbol_data.should_reject_trades:
        return OrderResult(message, symbol_data.last_bid, symbol_data.last_offer)
    return None


@wallaroo.encoder
def encode_order_result(result):
    order = result.order
    payload = ORDER_RESULT.pack(order.side, order.order_id, order.account.encode("ascii"),
                                order.symbol.encode("ascii").ljust(4), order.quantity,
                                order.price, result.bid, result.offer, order.transact_time)
    return struct.pack(">I", len(payload)) + payload
