"""Deterministic market data and order generator for the market spread example.

Writes two files of binary frames, ready for ``wallaroo send --binary``:

* ``--market-file`` (default ``market.msg``): NBBO quotes, first one per symbol then
  random ones; about half of them are too wide to trade.
* ``--orders-file`` (default ``orders.msg``): orders on the same symbols.

The formats are described in market_spread.py. The same ``--seed`` always
gives the same files.

    python gen_market.py --quotes 2000 --orders 2000 --seed 11
"""
import argparse
import random
import struct

MARKET_DATA = struct.Struct(">B4sQdd")
ORDER = struct.Struct(">BI6s4sBddQ")
HEADER = struct.Struct(">I")

# symbol -> typical mid price; the last few are penny stocks, where the
# relative (5% of mid) rule matters more than the absolute 0.05 rule
SYMBOLS = {
    "AAPL": 170.0, "MSFT": 310.0, "IBM": 140.0, "GE": 95.0, "F": 12.5, "T": 16.0,
    "BAC": 30.0, "XOM": 105.0, "KO": 60.0, "PFE": 35.0, "INTC": 33.0, "CSCO": 50.0,
    "ORCL": 110.0, "WMT": 155.0, "DIS": 90.0, "NKE": 100.0, "MCD": 280.0, "VZ": 38.0,
    "C": 45.0, "GM": 36.0, "SIRI": 0.90, "ZNGA": 0.45, "PLUG": 0.70, "NOK": 0.35,
}
START_TIME_MS = 1500000000000


def quote(rng, base):
    """A (bid, offer) around the price ``base``; about half of them spread too wide."""
    mid = base * rng.uniform(0.98, 1.02)
    if base < 1.0:
        spread = round(mid * rng.choice([rng.uniform(0.005, 0.045), rng.uniform(0.05, 0.12)]), 4)
        spread = min(spread, 0.049)        # below the absolute limit: only the 5% rule applies
        bid = round(mid - spread / 2, 4)
        return bid, round(bid + spread, 4)
    wide = rng.random() < 0.5
    spread = round(rng.uniform(0.05, 0.40), 2) if wide else round(rng.uniform(0.01, 0.04), 2)
    bid = round(mid - spread / 2, 2)
    return bid, round(bid + spread, 2)


def generate(quotes=2000, orders=2000, seed=11):
    """Return (market data tuples, order tuples), as decoded by the application.

    market data: (symbol, transact_time, bid, offer)
    orders: (order_id, account, symbol, side, quantity, price, transact_time)
    """
    rng = random.Random(seed)
    symbols = sorted(SYMBOLS)
    market = []
    for i in range(quotes):
        symbol = symbols[i] if i < len(symbols) else rng.choice(symbols)
        bid, offer = quote(rng, SYMBOLS[symbol])
        market.append((symbol, START_TIME_MS + i, bid, offer))
    order_list = []
    for i in range(orders):
        symbol = rng.choice(symbols)
        account = "AC{:04d}".format(rng.randint(0, 9999))
        side = rng.choice([1, 2])
        quantity = float(rng.randint(1, 100) * 10)
        price = round(SYMBOLS[symbol] * rng.uniform(0.97, 1.03), 4 if SYMBOLS[symbol] < 1 else 2)
        order_list.append((i + 1, account, symbol, side, quantity, price, START_TIME_MS + quotes + i))
    return market, order_list


def market_frames(market):
    out = []
    for symbol, transact_time, bid, offer in market:
        payload = MARKET_DATA.pack(1, symbol.encode("ascii").ljust(4), transact_time, bid, offer)
        out.append(HEADER.pack(len(payload)) + payload)
    return b"".join(out)


def order_frames(orders):
    out = []
    for order_id, account, symbol, side, quantity, price, transact_time in orders:
        payload = ORDER.pack(2, order_id, account.encode("ascii"), symbol.encode("ascii").ljust(4),
                             side, quantity, price, transact_time)
        out.append(HEADER.pack(len(payload)) + payload)
    return b"".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=2000, help="market data messages (default 2000)")
    parser.add_argument("--orders", type=int, default=2000, help="order messages (default 2000)")
    parser.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    parser.add_argument("--market-file", default="market.msg", help="default market.msg")
    parser.add_argument("--orders-file", default="orders.msg", help="default orders.msg")
    options = parser.parse_args(argv)
    market, orders = generate(options.quotes, options.orders, options.seed)
    with open(options.market_file, "wb") as out:
        out.write(market_frames(market))
    with open(options.orders_file, "wb") as out:
        out.write(order_frames(orders))
    print("wrote {} quotes to {} and {} orders to {}".format(
        len(market), options.market_file, len(orders), options.orders_file))


if __name__ == "__main__":
    main()
